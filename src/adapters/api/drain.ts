import type { EventEmitter } from 'node:events';

/**
 * Resolves when `stream` emits 'drain' (its buffer has room again after a write returned false)
 * or when `signal` aborts (the client went away), whichever comes first; never rejects. Shared
 * by every streaming answer, gRPC or HTTP, so a slow client holds up only its own stream.
 */
export function drained(stream: Pick<EventEmitter, 'on' | 'off'>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = () => {
      stream.off('drain', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    stream.on('drain', done);
    signal.addEventListener('abort', done, { once: true });
  });
}
