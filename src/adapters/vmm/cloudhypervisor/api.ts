import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { unixHttp } from '../unix-http.js';

/** A counter set per device, as `vm.counters` answers: `{ "_disk0": { "read_bytes": 1 } }`. */
export type ChCounters = Record<string, Record<string, number>>;

/** `vm.info`'s state (OpenAPI VmState). */
export type ChVmState = 'Created' | 'Running' | 'Shutdown' | 'Paused';

/**
 * The message of a failed Cloud Hypervisor API call. v53 answers a JSON array of the error
 * chain's messages; v41 answers 500 with plain text (vmm/src/api/http in each version). Both
 * are kept word for word, joined with ": " like the binary prints its chain.
 */
export function chErrorMessage(status: number, body: unknown, text: string): string {
  if (Array.isArray(body) && body.every((m) => typeof m === 'string')) return body.join(': ');
  return text.trim() || `HTTP ${status}`;
}

/** Cloud Hypervisor's REST API on its unix socket (`/api/v1/<verb>`). */
export class ChApi {
  constructor(
    readonly socket: string,
    private readonly timeoutMs = 3000,
  ) {}

  private async call(method: 'GET' | 'PUT', verb: string, body?: unknown): Promise<unknown> {
    const r = await unixHttp(this.socket, method, `/api/v1/${verb}`, body, this.timeoutMs);
    if (r.status >= 200 && r.status < 300) return r.body;
    throw new MatchlockError(r.status === 404 ? ErrorCode.FailedPrecondition : ErrorCode.Internal, `cloud-hypervisor ${verb}: ${chErrorMessage(r.status, r.body, r.text)}`);
  }

  /** `{version, pid?}`: the VMM answers at all. */
  async ping(): Promise<{ version: string; pid?: number }> {
    return (await this.call('GET', 'vmm.ping')) as { version: string; pid?: number };
  }

  async state(): Promise<ChVmState> {
    return ((await this.call('GET', 'vm.info')) as { state: ChVmState }).state;
  }

  async counters(): Promise<ChCounters> {
    return ((await this.call('GET', 'vm.counters')) ?? {}) as ChCounters;
  }

  async action(verb: 'vm.power-button' | 'vm.shutdown' | 'vm.pause' | 'vm.resume' | 'vm.reboot' | 'vmm.shutdown'): Promise<void> {
    await this.call('PUT', verb);
  }
}
