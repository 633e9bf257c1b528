import { create } from '@bufbuild/protobuf';
import { ListMicroVMsRequestSchema } from '../gen/services/microvm/v1alpha1/microvms_pb.js';
import { EXIT, cliError, connect, type ConnectOptions } from './client.js';

type Client = ReturnType<typeof connect>;

/**
 * A VM's uid from what the user typed: a uid as it is, or `namespace/name` looked up with
 * List. Names are not unique (CAPMVM makes several VMs of one name), so an ambiguous name is
 * an error (exit 2) listing the candidates' uids; no match is NotFound (exit 3).
 */
export async function resolveUid(c: Client, ref: string): Promise<string> {
  const slash = ref.indexOf('/');
  if (slash < 0) return ref;
  const namespace = ref.slice(0, slash);
  const name = ref.slice(slash + 1);
  if (!namespace || !name || name.includes('/')) throw cliError(`${ref}: give a uid or namespace/name`, EXIT.usage);
  const res = await c.listMicroVMs(create(ListMicroVMsRequestSchema, { namespace, name }));
  const found = res.microvm.filter((v) => v.spec?.namespace === namespace && v.spec.id === name);
  if (found.length === 0) throw cliError(`microvm ${ref} not found`, EXIT.notFound);
  if (found.length > 1) throw cliError(`${ref} names ${found.length} microvms; give one of their uids: ${found.map((v) => v.spec?.uid ?? '').join(', ')}`, EXIT.usage);
  return found[0]?.spec?.uid ?? '';
}

/** resolveUid over a connection of its own, for commands that talk to another service. */
export async function resolveRef(opts: ConnectOptions, ref: string): Promise<string> {
  if (!ref.includes('/')) return ref;
  const c = connect(opts);
  try {
    return await resolveUid(c, ref);
  } finally {
    c.close();
  }
}
