import type { MicroVM } from '../core/microvm/types.js';
import type { EventLog, Store } from '../core/ports.js';

/**
 * Records read per store call when everything is read: a page's parsed records are garbage
 * before the next is read, so at most this many are held at once, not the whole store (10,000
 * CAPMVM-shaped records parsed at once made the daemon's heap grow by about 250 MB). Small
 * enough that a page dies in V8's young generation (2 x 1 MiB, bin/matchlockd.js): 20 such
 * records parse to about 0.3 MB, where a page of 500 outlived the scavenges during its own
 * parse and was promoted whole, so a start with 1,000 records peaked at 102-108 MB of RSS until
 * V8's memory reducer ran, 70-74 MB with pages of 20 (bench/README.md).
 */
export const RECORDS_PAGE = 20;
/** Events read per store call while catching up: each carries a record, so as many as a page of records. */
const EVENTS_PAGE = RECORDS_PAGE;

/**
 * The files VMMs keep growing, of every VM on record whose VMM was started (a VM that never had
 * one has no file that grows), for the log bound. Every record is read once, a page at a time
 * in uid order (one synchronous read, so no change lands between pages); afterwards only the
 * records the event log says changed are read again, so a pass costs nothing while nothing
 * changes and one record's change costs one record, however many are stored. When the log no
 * longer holds every event since the last read (pruned), everything is read again.
 */
export class GrowingFiles {
  private readonly byUid = new Map<string, readonly string[]>();
  /** The id of the last event applied; undefined before the first read. */
  private cursor: number | undefined;

  constructor(
    private readonly store: Store & EventLog,
    /** A VM's growing files (its provider's), or none when its provider is unknown. */
    private readonly filesOf: (vm: MicroVM) => readonly string[],
  ) {}

  /** Every growing file now, in no particular order. */
  files(): string[] {
    const last = this.store.lastEventId();
    if (this.cursor === undefined || this.missed()) this.readAll(last);
    else if (last !== this.cursor) this.catchUp();
    return [...this.byUid.values()].flat();
  }

  /** Whether events after the cursor were pruned before they were read. */
  private missed(): boolean {
    const oldest = this.store.oldestEventId();
    return oldest !== undefined && this.cursor !== undefined && oldest > this.cursor + 1;
  }

  private readAll(last: number): void {
    this.byUid.clear();
    // Events written from here on are applied by the next catch-up, even for records read now.
    this.cursor = last;
    for (let page = this.store.page({}, { limit: RECORDS_PAGE }); page.length > 0; page = this.store.page({}, { after: page.at(-1)?.uid, limit: RECORDS_PAGE })) {
      for (const vm of page) this.set(vm);
    }
  }

  private catchUp(): void {
    for (;;) {
      const events = this.store.eventsAfter(this.cursor ?? 0, {}, EVENTS_PAGE);
      for (const e of events) {
        this.cursor = e.id;
        if (e.type === 'DELETED') this.byUid.delete(e.vm.uid);
        else this.set(e.vm);
      }
      if (events.length < EVENTS_PAGE) return;
    }
  }

  private set(vm: MicroVM): void {
    const files = vm.status.vmmPid ? this.filesOf(vm) : [];
    if (files.length) this.byUid.set(vm.uid, files);
    else this.byUid.delete(vm.uid);
  }
}
