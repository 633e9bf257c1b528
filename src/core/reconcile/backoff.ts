/**
 * Exponential back-off with full jitter: attempt n waits a random time in
 * [base * 2^(n-1) / 2, base * 2^(n-1)], capped at max. Half the span is kept as a floor so a
 * failing VM is never retried in a hot loop, the random half spreads retries of many VMs apart.
 */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random01: number): number {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + (exp / 2) * Math.min(1, Math.max(0, random01)));
}
