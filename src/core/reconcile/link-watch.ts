import { hostDeviceName } from '../microvm/host-names.js';
import type { MicroVM } from '../microvm/types.js';
import type { HostNetwork, LinkInfo, Logger } from '../ports.js';

/**
 * One change of a host link as the kernel announced it (RTM_NEWLINK or RTM_DELLINK, as
 * `ip monitor link` prints them): the link's name and ifindex; whether it was deleted;
 * whether it is administratively up (IFF_UP); the bridge or other master it is enslaved to,
 * if any.
 */
export interface LinkEvent {
  name: string;
  ifindex: number;
  deleted: boolean;
  up: boolean;
  master: string | undefined;
}

export interface LinkWatchOptions {
  store: { get(uid: string): MicroVM | undefined };
  network: Pick<HostNetwork, 'get'>;
  /** The daemon's bridge (`bridge-name`), for TAP interfaces without a bridge override. */
  bridgeName: string;
  /** The daemon's `parent-iface`, the link every MACVTAP interface sits on ('' when unset). */
  parentIface: string;
  /** Whether a reconcile pass runs for the VM now: its own link changes are not a break. */
  busy(uid: string): boolean;
  /**
   * Reconciles the VM now. `returned`: a bridge or macvtap parent of the VM that is back (the
   * one whose last failure found it missing, when that is one of its uplinks), so a back-off
   * after a failure for want of it is over and a VM FAILED for want of it is revived
   * (Reconciler.retryNow does either when the VM's last failure found that link missing, and
   * only then).
   */
  repair(uid: string, returned: string | undefined): void;
  logger: Logger;
  /** How long a VM's events are gathered before its links are read and it is repaired (ms, default 100). */
  debounceMs?: number;
}

/**
 * A link of a VM this daemon tracks: whose, of which kind, and the link it hangs on (its
 * uplink): a TAP's bridge, a macvtap's parent interface ('' when none is configured).
 */
interface TrackedLink {
  uid: string;
  kind: 'TAP' | 'MACVTAP';
  uplink: string;
}

/**
 * Turns host link events into repairs of the VMs they break, at once rather than at the next
 * resync.
 *
 * Only the links of VMs whose last reconcile pass has ended are tracked (track(), called after
 * every pass), by the names hostDeviceName gives them; the events of any other link, among
 * them those of VMs whose first pass still runs (a burst of creates), are dropped by one map
 * lookup. An event of a tracked link that shows it broken (deleted; for a TAP without its
 * bridge as master; not administratively up) starts a short wait for that VM (debounceMs)
 * which gathers what else comes; then, once no pass of the VM's own runs (a pass changes its
 * links itself, so the check waits for it to end), if the VM is CREATED in the store its links
 * are read again (events may arrive after the change they tell of was undone) and, if one is
 * still broken, what was seen is logged once and the VM is reconciled: its create plan
 * re-creates the link, re-attaches it and sets it up.
 *
 * A bridge deleted takes its ports out (events without a master), a macvtap's parent deleted
 * takes its macvtaps with it (the kernel deletes them): while such an uplink is missing, the
 * VMs whose links broke with it are not reconciled for it (a pass would fail and count against
 * their retries). When a link of the uplink's name appears again (a new ifindex, or after it
 * was seen missing), every CREATED tracked VM with an interface on it is reconciled at once,
 * and every PENDING one not backing off or whose last failure found that link missing
 * (status.missingLink): that one's back-off is cut short; and every FAILED one whose last
 * failure found it missing, which is revived (it ran out of attempts while the link was away).
 * A VM with another uplink still known missing waits for that one (a pass could only fail);
 * when the last returns, the back-off of the one its last failure missed is cut short. A
 * PENDING VM backing off after a failure for another reason keeps its back-off, and a VM
 * FAILED for another reason stays FAILED. A link that only a record names as missing (a pass
 * that attempted nothing, typically the first after a restart) is no sign that it left: when it
 * is there (read, or known from its events), only the VMs whose last failure missed it are
 * repaired, so none stays FAILED or backing off with its link present, and the others on it are
 * left alone.
 */
export class LinkWatch {
  private readonly links = new Map<string, TrackedLink>();
  /** Tracked VMs -> their link names. */
  private readonly names = new Map<string, string[]>();
  /** Uplinks (bridges, macvtap parents) in use by a tracked VM -> their uids. */
  private readonly uplinks = new Map<string, Set<string>>();
  /**
   * An uplink's ifindex as last seen in an event or read, or 'gone' once seen missing (its
   * deletion, a read, a pass that failed for want of it), or 'named' while only a record names
   * it missing (a stored missingLink after a restart) and a read of it is under way.
   */
  private readonly uplinkIndex = new Map<string, number | 'gone' | 'named'>();
  /** VMs waiting out debounceMs: per link name, what was seen last. */
  private readonly pending = new Map<string, { timer: NodeJS.Timeout; changes: Map<string, string> }>();
  /** VMs whose links broke while a pass of theirs ran: checked again when it ends (track()). */
  private readonly afterPass = new Map<string, Map<string, string>>();
  private readonly debounceMs: number;
  private closed = false;

  constructor(private readonly opts: LinkWatchOptions) {
    this.debounceMs = opts.debounceMs ?? 100;
  }

  /** Whether events of a link of this name can matter: a tracked VM's link or an uplink in use. */
  wants(name: string): boolean {
    return this.links.has(name) || this.uplinks.has(name);
  }

  /**
   * A reconcile pass of `uid` ended: its links are tracked from the record `vm` (its spec: the
   * names, bridges and macvtap parent of its interfaces), or forgotten when `vm` is undefined
   * (no record, or the VM is being deleted). `missingLink`: the bridge or parent whose absence
   * failed the pass; it is then known missing, so its next appearance is its return, also when
   * its deletion was never seen (it was missing before the daemon started). `stored`: the pass
   * attempted nothing (FAILED, retry not due) and `missingLink` is the one the last attempt
   * missed, as the record keeps it (Reconciler's passEnded). That is no sign the link is
   * missing now (the record may be older than the daemon): one the watch knows nothing of is
   * read, and if it is there, the VMs whose last failure missed it are repaired (awaited); one
   * known present repairs this VM at once, unless another of its uplinks is known missing; one
   * known missing waits for its return. So such a VM is never left FAILED or backing off with
   * its link there, and a link that is not read as returned: a pass that fails for want of it
   * again marks it missing, and the next such report waits.
   */
  track(uid: string, vm: MicroVM | undefined, missingLink?: string, stored = false): void {
    const before = new Set<string>();
    for (const name of this.names.get(uid) ?? []) {
      const l = this.links.get(name);
      if (l) before.add(l.uplink);
      this.links.delete(name);
    }
    this.names.delete(uid);
    const now = new Set<string>();
    if (vm) {
      const names: string[] = [];
      for (const [i, iface] of vm.spec.interfaces.entries()) {
        const name = hostDeviceName(vm, i);
        const kind = iface.type === 'MACVTAP' ? 'MACVTAP' : 'TAP';
        // flintlock's NetworkInterface names no parent: a macvtap's is the daemon's parent-iface.
        const uplink = kind === 'MACVTAP' ? this.opts.parentIface : (iface.overrides?.bridgeName ?? this.opts.bridgeName);
        this.links.set(name, { uid, kind, uplink });
        names.push(name);
        if (uplink !== '') now.add(uplink);
      }
      this.names.set(uid, names);
    }
    for (const uplink of now) {
      let uids = this.uplinks.get(uplink);
      if (!uids) this.uplinks.set(uplink, (uids = new Set()));
      uids.add(uid);
    }
    if (missingLink !== undefined && now.has(missingLink)) {
      if (stored) this.named(uid, missingLink);
      else this.missing(missingLink);
    }
    const deferred = this.afterPass.get(uid);
    if (deferred) {
      this.afterPass.delete(uid);
      this.run(uid, deferred);
    }
    // An uplink no tracked VM uses any more is forgotten, with what was seen of it.
    for (const uplink of before) {
      if (now.has(uplink)) continue;
      const uids = this.uplinks.get(uplink);
      if (uids?.delete(uid) && uids.size === 0) {
        this.uplinks.delete(uplink);
        this.uplinkIndex.delete(uplink);
      }
    }
  }

  /** One link event (see LinkEvent). */
  seen(e: LinkEvent): void {
    if (this.closed) return;
    const link = this.links.get(e.name);
    if (link) {
      const change = broken(link, e);
      if (change) this.later(link.uid, e.name, change);
      return;
    }
    if (this.uplinks.has(e.name)) this.uplinkSeen(e);
  }

  /**
   * A pass, or a read of the watch's own, found `uplink` missing. It may have appeared since
   * (its event then came before it was known missing), so it is read once more: if it is
   * there, that is its return.
   */
  private missing(uplink: string): void {
    if (this.uplinkIndex.get(uplink) === 'gone') return;
    this.uplinkIndex.set(uplink, 'gone');
    this.readAgain(uplink);
  }

  /**
   * The record of `uid` names `uplink` as the link its last attempt missed, and the pass
   * attempted nothing (see track).
   */
  private named(uid: string, uplink: string): void {
    const index = this.uplinkIndex.get(uplink);
    if (index === undefined) {
      this.uplinkIndex.set(uplink, 'named');
      this.readAgain(uplink);
      return;
    }
    // Known present: its return was seen, or it never left, before this VM was tracked (the
    // events of another VM's TAP on the bridge tell of it).
    if (typeof index !== 'number' || this.heldElsewhere(uid, uplink)) return;
    this.awaited(uplink, index, [uid]);
  }

  /**
   * Reads an uplink known or named missing: if it is there, that is the return of one seen
   * missing; one only named missing never left, and only the VMs waiting for it are repaired.
   * One named and read missing is known missing from then on.
   */
  private readAgain(uplink: string): void {
    this.opts.network.get(uplink).then(
      (l) => {
        if (this.closed) return;
        const index = this.uplinkIndex.get(uplink);
        if (index === 'named' && !l) this.uplinkIndex.set(uplink, 'gone');
        if ((index === 'gone' || index === 'named') && l) this.uplinkSeen({ name: uplink, ifindex: l.ifindex, deleted: false, up: l.up, master: l.master });
      },
      (err: unknown) => this.opts.logger.warn({ link: uplink, err: (err as Error).message }, 'link check failed'),
    );
  }

  /** Whether another uplink of `uid` than `uplink` is known missing: a pass could only fail. */
  private heldElsewhere(uid: string, uplink: string): boolean {
    return [...this.uplinksOf(uid).keys()].some((u) => u !== uplink && this.uplinkIndex.get(u) === 'gone');
  }

  /**
   * `uplink` is there (ifindex `index`) and never seen missing, and `uids` (tracked VMs on it,
   * none waiting for another uplink) may wait for it: those whose record names it as the link
   * their last attempt missed are repaired, their back-off cut short or, when FAILED, revived.
   * No other VM on it is touched, and the log does not say it came back.
   */
  private awaited(uplink: string, index: number, uids: Iterable<string>): void {
    const repairs: string[] = [];
    for (const uid of uids) {
      const status = this.opts.store.get(uid)?.status;
      if (status && status.state !== 'DELETING' && status.missingLink === uplink) repairs.push(uid);
    }
    if (repairs.length === 0) return;
    this.opts.logger.info({ link: uplink, ifindex: index, vms: repairs.length }, 'host link that VMs\' last attempts found missing is there: retrying them now');
    for (const uid of repairs) this.opts.repair(uid, uplink);
  }

  /**
   * Events may have been missed (the monitor was started again, or the kernel dropped some):
   * each uplink known missing is read again, and one that is there is taken as returned. Its
   * return event may be among those missed, and a pass that finds its VM's retry not due, or
   * the VM FAILED, does not read an uplink already known missing, so without this its VMs would
   * wait out their back-off and a FAILED one would stay FAILED.
   */
  eventsMissed(): void {
    if (this.closed) return;
    for (const [uplink, index] of this.uplinkIndex) if (index === 'gone' || index === 'named') this.readAgain(uplink);
  }

  /** Stops: waiting VMs are dropped (daemon shutdown). */
  close(): void {
    this.closed = true;
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
    this.afterPass.clear();
  }

  /**
   * An event of a bridge or macvtap parent in use. Only its appearance matters (a new ifindex,
   * or any after its deletion): its being set down fails no pass (a port is enslaved to, a
   * macvtap made and set up on, a link that is down), so its coming up repairs nothing. One
   * only named missing (by a record) that is there never left: only the VMs waiting for it are
   * repaired (awaited).
   */
  private uplinkSeen(e: LinkEvent): void {
    const before = this.uplinkIndex.get(e.name);
    if (e.deleted) {
      if (before === e.ifindex || typeof before !== 'number') this.uplinkIndex.set(e.name, 'gone');
      return;
    }
    this.uplinkIndex.set(e.name, e.ifindex);
    if (before === 'named') {
      this.awaited(e.name, e.ifindex, [...(this.uplinks.get(e.name) ?? [])].filter((uid) => !this.heldElsewhere(uid, e.name)));
      return;
    }
    if (before === undefined || before === e.ifindex) return;
    let skipping = 0;
    let revived = 0;
    let held = 0;
    const kinds = new Set<TrackedLink['kind']>();
    const repairs: { uid: string; returned: string }[] = [];
    for (const uid of this.uplinks.get(e.name) ?? []) {
      const status = this.opts.store.get(uid)?.status;
      if (!status || status.state === 'DELETING') continue;
      const own = this.uplinksOf(uid);
      // A TAP on br0 and a macvtap on the parent, and the parent still missing: a pass could
      // only fail for want of it and count a retry. Its return reconciles the VM.
      if (this.heldElsewhere(uid, e.name)) {
        held++;
        continue;
      }
      // The uplink the last failure missed is this one, or one of the VM's seen back before
      // this one (the VM was held for this one meanwhile).
      const m = status.missingLink;
      const waitedFor = m !== undefined && own.has(m) && (m === e.name || typeof this.uplinkIndex.get(m) === 'number') ? m : undefined;
      if (status.state === 'FAILED') {
        if (waitedFor === undefined) continue;
        revived++;
      } else if (status.state === 'PENDING') {
        // Backing off after another failure: an attempt now would most likely fail as the last.
        if (status.nextAttemptAt !== undefined && waitedFor === undefined) continue;
        if (waitedFor !== undefined) skipping++;
      }
      for (const kind of own.get(e.name) ?? []) kinds.add(kind);
      repairs.push({ uid, returned: waitedFor ?? e.name });
    }
    if (repairs.length === 0) {
      if (held > 0) this.opts.logger.info({ link: e.name, ifindex: e.ifindex, waitingForAnotherLink: held }, 'host link appeared again; its VMs wait for another of their links, still missing');
      return;
    }
    const what = kinds.size === 2 ? 'bridge and macvtap parent' : kinds.has('MACVTAP') ? 'macvtap parent' : 'bridge';
    this.opts.logger.info({ link: e.name, ifindex: e.ifindex, vms: repairs.length, skippingBackoff: skipping, revived, waitingForAnotherLink: held }, `${what} appeared again: re-attaching its VMs now`);
    for (const r of repairs) this.opts.repair(r.uid, r.returned);
  }

  /** The uplinks of a tracked VM, each with the kinds of its links on it. */
  private uplinksOf(uid: string): Map<string, Set<TrackedLink['kind']>> {
    const out = new Map<string, Set<TrackedLink['kind']>>();
    for (const name of this.names.get(uid) ?? []) {
      const l = this.links.get(name);
      if (!l || l.uplink === '') continue;
      let kinds = out.get(l.uplink);
      if (!kinds) out.set(l.uplink, (kinds = new Set()));
      kinds.add(l.kind);
    }
    return out;
  }

  private later(uid: string, name: string, change: string): void {
    const p = this.pending.get(uid);
    if (p) {
      p.changes.set(name, change);
      return;
    }
    const timer = setTimeout(() => {
      const changes = this.pending.get(uid)?.changes ?? new Map<string, string>();
      this.pending.delete(uid);
      this.run(uid, changes);
    }, this.debounceMs);
    timer.unref();
    this.pending.set(uid, { timer, changes: new Map([[name, change]]) });
  }

  private run(uid: string, changes: Map<string, string>): void {
    this.check(uid, changes).catch((err: unknown) => this.opts.logger.warn({ uid, err: (err as Error).message }, 'link check failed'));
  }

  /**
   * After the wait: repairs the VM when it is CREATED and a link is still broken. While a pass
   * of its own runs, the check waits for that pass to end: the pass may be what changed the
   * link, or may have looked at its links before the change.
   */
  private async check(uid: string, changes: Map<string, string>): Promise<void> {
    if (this.closed) return;
    if (this.opts.busy(uid)) {
      this.defer(uid, changes);
      return;
    }
    const vm = this.opts.store.get(uid);
    if (vm?.status.state !== 'CREATED') return;
    const broke: { link: string; seen: string; now: string }[] = [];
    /** Broken with their uplink, which is missing: repaired when it appears again. */
    const waiting: { link: string; seen: string; now: string }[] = [];
    for (const [name, seen] of changes) {
      const tracked = this.links.get(name);
      if (!tracked) continue;
      const now = state(tracked, await this.opts.network.get(name));
      if (!now) continue;
      // A TAP whose bridge is gone cannot be put back on it, nor a macvtap made again without
      // its parent (whose deletion took it): a pass now would fail and count against the VM's
      // retries, so an uplink that comes and goes (network tooling restarted, a NIC's driver
      // reloaded) would wear a healthy VM down to FAILED. Its return repairs the VM
      // (uplinkSeen), which is sure to happen once the uplink is marked gone here; it is read
      // once more then, as it may have come back since the read above (its event seen while
      // it was not known missing).
      if (tracked.uplink !== '' && (await this.opts.network.get(tracked.uplink)) === undefined) {
        this.missing(tracked.uplink);
        waiting.push({ link: name, seen, now });
        continue;
      }
      broke.push({ link: name, seen, now });
    }
    if ((broke.length === 0 && waiting.length === 0) || this.closed) return;
    if (this.opts.busy(uid)) {
      this.defer(uid, changes);
      return;
    }
    const log = { uid, namespace: vm.spec.namespace, name: vm.spec.name };
    // The kernel detaches a VMM's queue from a tun or macvtap device it deletes (writes then
    // fail with EBADFD; a macvtap's /dev/tap<ifindex> goes with it); a link made again under
    // the same name is a new device the running VMM never opened.
    const gone = [...broke, ...waiting].filter((b) => b.now === 'missing').map((b) => b.link);
    if (gone.length > 0 && vm.status.vmmPid > 0) {
      this.opts.logger.warn({ ...log, links: gone }, 'a deleted link is made again, but the running VMM still holds the old one: the guest\'s interface has no traffic until the VM is restarted (matchlock vm restart)');
    }
    if (broke.length === 0) return;
    this.opts.logger.info({ ...log, links: broke }, 'host link of a VM changed: repairing it now');
    this.opts.repair(uid, undefined);
  }

  private defer(uid: string, changes: Map<string, string>): void {
    const waiting = this.afterPass.get(uid);
    if (!waiting) this.afterPass.set(uid, new Map(changes));
    else for (const [name, change] of changes) waiting.set(name, change);
  }
}

/** What an event shows broken about a VM's link, in a few words, or undefined when nothing. */
export function broken(link: { kind: 'TAP' | 'MACVTAP'; uplink: string }, e: LinkEvent): string | undefined {
  if (e.deleted) return 'deleted';
  if (link.kind === 'TAP' && e.master !== link.uplink) return e.master === undefined ? `detached from ${link.uplink}` : `moved from ${link.uplink} to ${e.master}`;
  if (!e.up) return 'set down';
  return undefined;
}

/** What is wrong with a VM's link as read now, or undefined when it is as its plan leaves it. */
function state(link: TrackedLink, l: LinkInfo | undefined): string | undefined {
  if (!l) return 'missing';
  if (link.kind === 'TAP' && l.master !== link.uplink) return l.master === undefined ? 'no master' : `master ${l.master}`;
  if (!l.up) return 'down';
  return undefined;
}
