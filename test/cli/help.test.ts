import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { run } from '../../src/cli/main.js';
import { EXIT } from '../../src/cli/client.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

async function cli(args: string[]) {
  let out = '';
  let err = '';
  const code = await run(args, { out: (t) => (out += t), err: (t) => (err += t) }, {});
  return { code, out, err };
}

/** The subcommands a --help lists (commander's own `help` left out). */
function subcommands(help: string): string[] {
  const at = help.indexOf('\nCommands:\n');
  if (at < 0) return [];
  const block = help.slice(at + '\nCommands:\n'.length).split('\n\n')[0] ?? '';
  return block.split('\n').map((l) => /^ {2}(\S+)/.exec(l)?.[1]?.split('|')[0] ?? '').filter((n) => n && n !== 'help');
}

/** Every command path of the CLI, found the way a user would: through --help, level by level. */
async function commandTree(path: string[] = []): Promise<{ path: string[]; help: string }[]> {
  const { out } = await cli([...path, '--help']);
  const here = [{ path, help: out }];
  for (const sub of subcommands(out)) here.push(...(await commandTree([...path, sub])));
  return here;
}

describe('matchlock --help and shell completion', () => {
  const tmp = tempDir('cli-help');
  after(() => tmp.remove());

  it('shows an Examples section on every command, each example running matchlock', async () => {
    const tree = await commandTree();
    assert.ok(tree.length > 20, `only ${tree.length} commands found`);
    const without = tree.filter((c) => !/\nExamples:\n {2}\$ /.test(c.help)).map((c) => `matchlock ${c.path.join(' ')}`.trim());
    assert.deepEqual(without, [], 'commands without examples');
    for (const c of tree) {
      const examples = c.help.slice(c.help.indexOf('\nExamples:\n')).split('\n').filter((l) => l.startsWith('  $ '));
      for (const e of examples) assert.match(e, /^ {2}\$ (matchlock |source <\(matchlock )/, `${c.path.join(' ')}: ${e}`);
    }
  });

  it('completes subcommands and options in bash from the command tree', async () => {
    const script = join(tmp.path, 'matchlock.bash');
    const gen = await cli(['completion', 'bash']);
    assert.equal(gen.code, 0, gen.err);
    writeFileSync(script, gen.out);
    const vmSubs = subcommands((await cli(['vm', '--help'])).out);
    assert.ok(vmSubs.includes('create') && vmSubs.includes('delete'), vmSubs.join(' '));
    // What bash itself does on <Tab>: the function `complete -p` names, called with the line's words.
    const complete = (...words: string[]) => {
      const r = spawnSync('bash', ['-c', `source ${script}
fn=$(complete -p matchlock | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')
COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 ))
"$fn"; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter(Boolean).sort();
    };
    const vmWithAliases = complete('matchlock', 'vm', '');
    for (const s of vmSubs) assert.ok(vmWithAliases.includes(s), `${s} in ${vmWithAliases.join(' ')}`);
    assert.deepEqual(complete('matchlock', 'vm', 'de'), ['delete', 'describe']);
    assert.deepEqual(complete('matchlock', 'vm', 'del'), ['delete']);
    assert.deepEqual(complete('matchlock', '--token', 't', 'im'), ['image']);
    // Options of the command reached, its parent's included (image's --state-dir after pull).
    assert.deepEqual(complete('matchlock', 'image', 'pull', 'alpine', '--sta'), ['--state-dir']);
    assert.deepEqual(complete('matchlock', 'image', 'list', '--he'), ['--help'], 'an alias reaches its command');
    assert.deepEqual(complete('matchlock', 'host', 'setup', '--se'), ['--set']);
    // compgen, as bash's own completion builtins see the registered function.
    const registered = spawnSync('bash', ['-c', `source ${script}; complete -p matchlock`], { encoding: 'utf8' });
    assert.match(registered.stdout, /^complete -F _matchlock matchlock$/m);
  });

  it('writes zsh and fish scripts from the same tree, and refuses other shells', async () => {
    const zsh = await cli(['completion', 'zsh']);
    assert.match(zsh.out, /^#compdef matchlock\n/);
    assert.match(zsh.out, /bashcompinit/);
    assert.match(zsh.out, /"vm"\) echo 'create /);
    const fish = (await cli(['completion', 'fish'])).out.split('\n');
    assert.ok(fish.some((l) => /^complete -c matchlock -n '__fish_seen_subcommand_from vm; and not __fish_seen_subcommand_from create .*' -a 'create'/.test(l)), fish.join('\n'));
    assert.ok(fish.some((l) => l.startsWith("complete -c matchlock -n '__fish_use_subcommand' -a 'vm'")));
    assert.ok(fish.some((l) => /-n '__fish_seen_subcommand_from setup; .*' -l set -r/.test(l) || /-n '__fish_seen_subcommand_from setup' -l set -r/.test(l)), 'host setup --set');
    const bad = await cli(['completion', 'tcsh']);
    assert.equal(bad.code, EXIT.usage);
    assert.match(bad.err, /completion tcsh: must be bash, zsh or fish/);
  });
});

describe('usage errors', () => {
  it("say who speaks as the CLI's other errors do, at the top and in subcommands, and exit 2", async () => {
    for (const args of [['-o', 'xml', 'vm', 'list'], ['vm', 'list', '--bogus'], ['image', 'nosuch']]) {
      const r = await cli(args);
      assert.equal(r.code, EXIT.usage, args.join(' '));
      assert.match(r.err, /^matchlock: /, args.join(' '));
      assert.doesNotMatch(r.err, /^error: /m, args.join(' '));
    }
  });
});

describe('a closed output', () => {
  it('ends the CLI quietly with 141, as SIGPIPE ends other tools, not with a stack trace', async () => {
    const child = spawn(process.execPath, [join(ROOT, 'bin/matchlock.js'), '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
    // Closed before the CLI has started, so its first write meets EPIPE.
    child.stdout.destroy();
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 141, err);
    assert.equal(err, '');
  });
});

describe('a command left with nothing to wait on', () => {
  it('fails with exit 1 and says so, instead of Node ending it silently with 13', () => {
    // A wait no event can end: the event loop empties while the command is unfinished.
    const script = `
      import { reportUnfinished } from ${JSON.stringify(join(ROOT, 'src/cli/main.ts'))};
      reportUnfinished('matchlock');
      await new Promise(() => {});
    `;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, EXIT.error, r.stderr);
    assert.match(r.stderr, /^matchlock: internal error: the command ended while still waiting/);
  });

  it('a command that finishes keeps its own status', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), 'completion', 'tcsh'], { encoding: 'utf8' });
    assert.equal(r.status, EXIT.usage, r.stderr);
    assert.doesNotMatch(r.stderr, /internal error/);
  });
});
