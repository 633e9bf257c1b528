import { ErrorCode, MatchlockError } from '../core/errors.js';
import { create } from '@bufbuild/protobuf';
import { Command, Option } from 'commander';
import {
  CreateMicroVMRequestSchema,
  DeleteMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  ListMicroVMsRequestSchema,
} from '../gen/services/microvm/v1alpha1/microvms_pb.js';
import type { MicroVM } from '../gen/types/microvm_pb.js';
import { EXIT, cliError, connect, type ConnectOptions } from './client.js';
import { documentText, formatVms, vmListPrinter, type Format } from './output.js';
import { readSpecFile, specFromFlags, type SpecFlags } from './spec.js';
import { resolveUid } from './resolve.js';
import { connectService } from '../adapters/api/client.js';
import { ListMicroVMEventsRequestSchema, MicroVMLifecycle, type MicroVMEvent } from '../gen/services/matchlock/v1/lifecycle_pb.js';
import { addPowerCommands } from './power.js';
import { describeVm, readLeaseFile } from './describe.js';
import { attachConsole, printConsole } from './console.js';
import { parseDuration } from '../core/duration.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** Records asked for per ListMicroVMs call by `vm list` (some 1.5 MB of CAPMVM-shaped VMs). */
const LIST_PAGE_SIZE = 500;

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

export function vmCommand(globals: () => ConnectOptions & { output: Format }, io: Io): Command {
  const vm = new Command('vm').description('create, inspect and delete MicroVMs on a flintlock-compatible host');
  const withClient = async <T>(fn: (c: ReturnType<typeof connect>) => Promise<T>): Promise<T> => {
    const c = connect(globals());
    try {
      return await fn(c);
    } finally {
      c.close();
    }
  };
  const print = (vms: MicroVM[], single: boolean) => io.out(formatVms(vms, globals().output, single));

  vm.command('create')
    .description('create a MicroVM from a spec file (-f) or from flags')
    .option('-f, --file <path>', 'MicroVMSpec as YAML or JSON ("-" for stdin); field names in any case, _ optional (as Go\'s encoding/json), enum names or numbers')
    .option('--name <name>', 'VM name (spec id)')
    .option('--namespace <ns>', 'namespace (default "default")')
    .option('--kernel-image <ref>', 'OCI image holding the kernel')
    .option('--kernel-filename <path>', 'kernel path inside the image', 'boot/vmlinux')
    .option('--kernel-cmdline <key=value>', 'extra kernel argument (repeatable)', collect)
    .option('--no-network-config', 'do not generate the guest network-config')
    .option('--initrd-image <ref>', 'OCI image holding an initrd')
    .option('--initrd-filename <path>', 'initrd path inside the image')
    .option('--root-image <ref>', 'OCI image for the root volume')
    .option('--root-size <mb>', 'grow the root volume to this size in MB')
    .option('--vcpu <n>', 'virtual CPUs (default 2)')
    .option('--memory <mb>', 'memory in MB (default 1024)')
    .option('--interface <spec>', 'id=eth1,type=tap|macvtap[,mac=…][,bridge=…][,address=CIDR][,gateway=IP] (repeatable; default id=eth1,type=tap)', collect)
    .option('--metadata-from-file <key=path>', 'metadata item from a file, e.g. user-data=./cloud-init.yaml (repeatable)', collect)
    .option('--label <key=value>', 'label (repeatable)', collect)
    .option('--provider <name>', 'qemu, firecracker or cloudhypervisor (default: the host default)')
    .action(async (opts: SpecFlags & { file?: string }) => {
      const flagged = Object.keys(opts).some((k) => !['file', 'kernelFilename', 'networkConfig'].includes(k));
      if (opts.file !== undefined && flagged) throw cliError('give either -f or spec flags, not both', EXIT.usage);
      if (opts.file === undefined && opts.name === undefined) throw cliError('give -f <spec file> or at least --name', EXIT.usage);
      const spec = opts.file !== undefined ? readSpecFile(opts.file) : specFromFlags(opts);
      const res = await withClient((c) => c.createMicroVM(create(CreateMicroVMRequestSchema, { microvm: spec })));
      if (res.microvm) print([res.microvm], true);
    });

  const leasesOption = () => new Option('--leases-file <path>', "the hub's DHCP lease file (dnsmasq or dhcpd), for the guests' addresses").env('MATCHLOCK_LEASES_FILE');
  const show = async (ref: string, opts: { leasesFile?: string }) => {
    const res = await withClient(async (c) => c.getMicroVM(create(GetMicroVMRequestSchema, { uid: await resolveUid(c, ref) })));
    if (!res.microvm) return;
    if (globals().output === 'table') io.out(describeVm(res.microvm, readLeaseFile(opts.leasesFile), Date.now(), await recentEventsOf(res.microvm.spec?.uid ?? '')));
    else print([res.microvm], true);
  };
  // The VM's newest changes from matchlock.v1; a flintlockd has none, which describe says.
  const recentEventsOf = async (uid: string): Promise<MicroVMEvent[] | string> => {
    const c = connectService(MicroVMLifecycle, globals());
    try {
      return (await c.listMicroVMEvents(create(ListMicroVMEventsRequestSchema, { uid, limit: 10 }))).events;
    } catch (err) {
      return `events not available: ${(err as Error).message}`;
    } finally {
      c.close();
    }
  };
  vm.command('get <vm>')
    .description('show one MicroVM (uid or namespace/name); the table form is `vm describe`')
    .addOption(leasesOption())
    .action(show);

  vm.command('describe <vm>')
    .description('one MicroVM in plain words: state, failing step and reason, next retry, addresses, boot, VMM pid')
    .addOption(leasesOption())
    .action(show);

  vm.command('logs <vm>')
    .description("print the VM's serial console (from its bounded log on the host), over the API")
    .option('-f, --follow', 'keep printing new output until interrupted')
    .option('--tail <lines>', 'only the last N lines')
    .action(async (ref: string, opts: { follow?: boolean; tail?: string }) => {
      const tail = opts.tail === undefined ? undefined : Number(opts.tail);
      if (tail !== undefined && (!Number.isInteger(tail) || tail < 0)) throw cliError(`--tail ${opts.tail}: must be a whole number >= 0`, EXIT.usage);
      const uid = await withClient((c) => resolveUid(c, ref));
      await printConsole(globals(), uid, { tail, follow: !!opts.follow }, io);
    });

  vm.command('console <vm>')
    .description("attach to the VM's serial console interactively (Ctrl-] detaches; so does the end of piped input, after --eof-timeout)")
    .option('--eof-timeout <duration>', "once stdin ends (a pipe or file), keep printing the console's output this long, then detach", '0.5s')
    .action(async (ref: string, o: { eofTimeout: string }) => {
      const linger = parseDuration(o.eofTimeout);
      if (linger === undefined) throw cliError(`--eof-timeout ${o.eofTimeout}: must be a duration like 0.5s`, EXIT.usage);
      const uid = await withClient((c) => resolveUid(c, ref));
      await attachConsole(globals(), uid, io, process.stdin, process.stdout, linger);
    });

  vm.command('list')
    .alias('ls')
    .description('list MicroVMs (all namespaces unless --namespace)')
    .option('--namespace <ns>', 'only this namespace')
    .option('--name <name>', 'only VMs with this name')
    .action(async (opts: { namespace?: string; name?: string }) => {
      // A page at a time: no answer has to hold every VM (10,000 VMs with cloud-init data are
      // some 30 MB). JSON and YAML are printed as pages come, a table once its widths are known.
      // A flintlockd ignores page_size and sends everything at once with no token, which ends
      // the loop after one answer.
      const printer = vmListPrinter(globals().output);
      await withClient(async (c) => {
        let pageToken = '';
        do {
          const res = await c.listMicroVMs(create(ListMicroVMsRequestSchema, { namespace: opts.namespace ?? '', name: opts.name, pageSize: LIST_PAGE_SIZE, pageToken }));
          io.out(printer.page(res.microvm));
          if (res.nextPageToken !== '' && res.nextPageToken === pageToken) throw cliError('the server returned the same page token twice; stopping', EXIT.error);
          pageToken = res.nextPageToken;
        } while (pageToken !== '');
      });
      io.out(printer.end());
    });

  vm.command('delete <vm...>')
    .alias('rm')
    .description('delete MicroVMs by uid or namespace/name (returns once they are DELETING; safe to repeat)')
    .action(async (refs: string[]) => {
      const deleted: { uid: string; found: boolean }[] = [];
      const format = globals().output;
      await withClient(async (c) => {
        const seen = new Set<string>();
        for (const ref of refs) {
          const uid = await resolveUid(c, ref);
          if (seen.has(uid)) continue;
          seen.add(uid);
          // Delete of an unknown uid succeeds (safe to repeat); say so rather than "deleting".
          const known = await c.getMicroVM(create(GetMicroVMRequestSchema, { uid })).then(
            () => true,
            (err: unknown) => {
              if (err instanceof MatchlockError && err.code === ErrorCode.NotFound) return false;
              throw err;
            },
          );
          await c.deleteMicroVM(create(DeleteMicroVMRequestSchema, { uid }));
          deleted.push({ uid, found: known });
          if (format === 'table') io.out(known ? `${uid} deleting\n` : `${uid} not found: nothing to delete\n`);
        }
      }).finally(() => {
        // What was asked before a failure is said in every format.
        const doc = documentText(format, deleted);
        if (doc !== undefined) io.out(doc);
      });
    });

  addPowerCommands(vm, globals, io);
  return vm;
}
