#!/usr/bin/env node
// A VMM stand-in that boots nothing: it writes its pid file, prints a boot line to its console
// and sleeps until it is told to stop. Usage: vmm.mjs --id <uid> --pid-file <p> --console <p>
import { writeFileSync, appendFileSync } from 'node:fs';
import { setInterval } from 'node:timers';

const arg = (name) => {
  const i = process.argv.indexOf(name);
  if (i < 0 || !process.argv[i + 1]) {
    process.stderr.write(`missing ${name}\n`);
    process.exit(2);
  }
  return process.argv[i + 1];
};
const pidFile = arg('--pid-file');
const consoleFile = arg('--console');
arg('--id');
writeFileSync(pidFile, `${process.pid}\n`);
appendFileSync(consoleFile, 'Run /sbin/init as init process\n');
process.on('SIGTERM', () => process.exit(0));
setInterval(() => undefined, 1 << 30);
