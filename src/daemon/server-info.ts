import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../adapters/exec.js';
import type { ServerInfo } from '../adapters/api/matchlock.js';
import type { ProviderModule } from '../adapters/vmm/registry.js';
import type { ProviderEntry } from '../core/vmm.js';
import { PACKAGE_ROOT } from '../package-root.js';
import { VERSION } from '../version.js';
import type { DaemonConfig } from './config.js';
import { binaryFor, findBinary } from './providers.js';

const ROOT = PACKAGE_ROOT;

/**
 * The commit matchlock runs from: MATCHLOCK_COMMIT when the package was built with it, else the
 * checkout's HEAD (read from .git, no git binary needed); empty when neither is known.
 */
export function buildCommit(env: NodeJS.ProcessEnv = process.env, root = ROOT): string {
  if (env.MATCHLOCK_COMMIT) return env.MATCHLOCK_COMMIT;
  try {
    const git = join(root, '.git');
    // A linked checkout's .git is a file naming its git dir.
    const dir = existsSync(join(git, 'HEAD')) ? git : readFileSync(git, 'utf8').replace(/^gitdir:\s*/, '').trim();
    const head = readFileSync(join(dir, 'HEAD'), 'utf8').trim();
    if (!head.startsWith('ref: ')) return head;
    const ref = head.slice(5);
    // A linked checkout keeps its refs in the common git dir.
    const common = existsSync(join(dir, 'commondir')) ? join(dir, readFileSync(join(dir, 'commondir'), 'utf8').trim()) : dir;
    const loose = join(common, ref);
    if (existsSync(loose)) return readFileSync(loose, 'utf8').trim();
    const packed = readFileSync(join(common, 'packed-refs'), 'utf8').split('\n').find((l) => l.endsWith(` ${ref}`));
    return packed?.split(' ')[0] ?? '';
  } catch {
    return '';
  }
}

/**
 * What GetServerInfo answers. VMM versions are asked once (`<bin> --version`, first line) and
 * kept: the binaries do not change under a running daemon often enough to ask on every call.
 */
export function serverInfoSource(cfg: DaemonConfig, registry: ReadonlyMap<string, ProviderModule>, entries: ReadonlyMap<string, ProviderEntry>, defaultProvider: string, daemonId: string): () => Promise<ServerInfo> {
  const startedAt = new Date();
  const commit = buildCommit();
  let providers: Promise<ServerInfo['providers']> | undefined;
  const gather = () =>
    Promise.all(
      [...registry].map(async ([name, m]) => {
        const binary = binaryFor(cfg, m);
        const found = findBinary(binary);
        const version = found ? await run(found, ['--version'], { timeoutMs: 5000 }).then((r) => (r.stdout.split('\n')[0] ?? '').trim(), () => '') : '';
        const a = entries.get(name)?.availability;
        return { name, version, binary, available: a?.usable === true, reason: a && !a.usable ? a.reason : '', isDefault: name === defaultProvider };
      }),
    );
  return async () => ({
    version: VERSION,
    commit,
    apiVersions: ['microvm.services.api.v1alpha1', 'matchlock.v1'],
    providers: await (providers ??= gather()),
    stateDir: cfg.stateDir,
    daemonId,
    startedAt,
  });
}
