import { hostDeviceName } from '../microvm/host-names.js';
import { desiredPower, imageRefs, restartPending, specVolumes } from '../microvm/types.js';
import type { CreateContext, DeleteContext } from './context.js';
import type { Step } from './step.js';
import { EnsureDirectory, RemoveDirectory } from './steps/directory.js';
import { BootFile, PullImage } from './steps/images.js';
import { MacvtapInterface, RemoveInterface, TapInterface } from './steps/interface.js';
import { SeedDisk } from './steps/seed-disk.js';
import { RemoveVolume, CreateVolume } from './steps/volume.js';
import { GuestPower, RestartVmm, StartVmm, StopVmm, StopVmmForPower, Supervise } from './steps/vmm.js';

/**
 * The create plan, in order: images, boot files, directories, volumes (block devices, root first),
 * interfaces, the NoCloud seed disk when the provider wants one, the provider's own steps, the VMM
 * and its supervision. The volume and interface steps run before the seed and the VMM so the
 * launch sees every disk path, ifindex and MAC.
 */
export function createPlan(ctx: CreateContext): Step[] {
  const { vm, deps, ref } = ctx;
  const steps: Step[] = imageRefs(vm.spec).map((r) => new PullImage(ctx, r));
  steps.push(new BootFile(ctx, 'kernel'));
  if (vm.spec.initrd) steps.push(new BootFile(ctx, 'initrd'));
  steps.push(new EnsureDirectory(deps.files, ref.dir, 'vm directory'), new EnsureDirectory(deps.files, ref.runDir, 'run directory'));
  specVolumes(vm.spec)
    .filter((v) => v.source.containerSource !== undefined)
    .forEach((v, n) => steps.push(new CreateVolume(ctx, v, n)));
  vm.spec.interfaces.forEach((iface, n) => steps.push(iface.type === 'TAP' ? new TapInterface(ctx, iface, n) : new MacvtapInterface(ctx, iface, n)));
  const seed = ctx.seedDiskPath;
  if (seed) steps.push(new SeedDisk(ctx, seed));
  steps.push(...ctx.instance.createSteps(() => ctx.launch()));
  // The operator's power intent (matchlock.v1.MicroVMLifecycle): a stopped VM keeps everything
  // but its VMM; a restart stops the VMM before StartVmm starts a new one.
  const power = desiredPower(vm);
  if (power === 'STOPPED') {
    steps.push(new StopVmmForPower(ctx));
    return steps;
  }
  if (restartPending(vm)) steps.push(new RestartVmm(ctx, vm.power?.restart ?? 0));
  steps.push(new StartVmm(ctx), new Supervise(ctx));
  if (power === 'PAUSED' || vm.status.power === 'PAUSED') steps.push(new GuestPower(ctx, power === 'PAUSED'));
  return steps;
}

/**
 * The delete plan: stop the VMM, undo the provider's own steps, release volumes and interfaces,
 * then remove the run and VM directories.
 */
export function deletePlan(ctx: DeleteContext): Step[] {
  const { vm, deps, ref, instance, log } = ctx;
  const steps: Step[] = [new StopVmm(vm.uid, instance, deps.supervisor, deps.deleteVmTimeoutMs, log, vm.spec.provider)];
  steps.push(...instance.deleteSteps());
  for (const v of specVolumes(vm.spec)) {
    if (v.source.containerSource === undefined) continue;
    steps.push(new RemoveVolume(deps.volumes, { uid: vm.uid, volumeId: v.id, dir: ref.dir }, log));
  }
  vm.spec.interfaces.forEach((iface, n) => {
    const owner = { daemonId: deps.daemonId, uid: vm.uid, deviceId: iface.deviceId, kind: iface.type === 'MACVTAP' ? ('macvtap' as const) : ('tap' as const) };
    steps.push(new RemoveInterface(deps.network, hostDeviceName(vm, n), owner, log));
  });
  steps.push(new RemoveDirectory(deps.files, ref.runDir, 'run directory'), new RemoveDirectory(deps.files, ref.dir, 'vm directory'));
  return steps;
}
