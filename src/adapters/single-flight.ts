/**
 * Runs at most one job per key at a time: callers asking for a key that is in flight share its
 * promise (two VMs that need one image wait on one unpack). The key is free again once the job
 * settles, so a failure is retried by the next caller rather than cached.
 */
export class SingleFlight<T> {
  private readonly inFlight = new Map<string, Promise<T>>();

  run(key: string, job: () => Promise<T>): Promise<T> {
    let p = this.inFlight.get(key);
    if (!p) {
      p = job().finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, p);
    }
    return p;
  }
}
