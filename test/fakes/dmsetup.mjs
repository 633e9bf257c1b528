#!/usr/bin/env node
// A stand-in for dmsetup on machines without device-mapper. It checks each call against the
// grammar and rules of the real tool for the subset matchlock uses, keeps pool state in
// $FAKE_DM_STATE, and backs each thin device with a sparse file, so dd, mkfs and resize2fs
// work on /dev/mapper-style paths under $FAKE_DM_DIR. Anything it does not recognise fails.
import { existsSync, readFileSync, writeFileSync, copyFileSync, rmSync, symlinkSync, truncateSync, statSync, mkdirSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';

const stateFile = process.env.FAKE_DM_STATE;
const dmDir = process.env.FAKE_DM_DIR;
if (!stateFile || !dmDir) fail('FAKE_DM_STATE and FAKE_DM_DIR must be set');
const dataDir = `${stateFile}.data`;
mkdirSync(dataDir, { recursive: true });
const state = existsSync(stateFile) ? JSON.parse(readFileSync(stateFile, 'utf8')) : { pools: {}, devices: {} };
const args = process.argv.slice(2);
if (process.env.FAKE_DM_LOG) appendFileSync(process.env.FAKE_DM_LOG, JSON.stringify(args) + '\n');

function fail(msg, code = 1) {
  process.stderr.write(`device-mapper: ${msg}\n`);
  process.exit(code);
}
function save() {
  writeFileSync(stateFile, JSON.stringify(state, null, 1));
}
const MAX_ID = 2 ** 24 - 1;
function thinId(s) {
  if (!/^\d+$/.test(s ?? '') || Number(s) > MAX_ID) fail(`invalid thin device id ${s}`);
  return Number(s);
}

const [cmd, ...rest] = args;
switch (cmd) {
  case 'message': {
    // dmsetup message <pool> <sector> <message>
    const [pool, sector, message, ...extra] = rest;
    if (extra.length || message === undefined) fail('usage: message <device> <sector> <message>');
    const p = state.pools[pool];
    if (!p) fail(`${pool}: no such pool`);
    if (sector !== '0') fail('thin-pool messages are sent to sector 0');
    const [verb, a, b, ...more] = message.split(' ');
    if (more.length) fail(`unexpected arguments in message "${message}"`);
    if (verb === 'create_thin') {
      const id = thinId(a);
      if (b !== undefined) fail('create_thin takes one id');
      if (p.thins[id]) fail(`thin id ${id} exists`);
      p.thins[id] = { origin: null };
      writeFileSync(join(dataDir, `${pool}-${id}`), '');
    } else if (verb === 'create_snap') {
      const id = thinId(a);
      const origin = thinId(b);
      if (p.thins[id]) fail(`thin id ${id} exists`);
      if (!p.thins[origin]) fail(`origin ${origin} does not exist`);
      const active = Object.values(state.devices).find((d) => d.pool === pool && d.id === origin && !d.suspended);
      if (active) fail(`origin ${origin} is active: suspend it before taking a snapshot`);
      p.thins[id] = { origin };
      copyFileSync(join(dataDir, `${pool}-${origin}`), join(dataDir, `${pool}-${id}`));
    } else if (verb === 'delete') {
      const id = thinId(a);
      if (!p.thins[id]) fail(`thin id ${id} does not exist`);
      if (Object.values(state.devices).some((d) => d.pool === pool && d.id === id)) fail(`thin id ${id} is in use by an active device`);
      delete p.thins[id];
      rmSync(join(dataDir, `${pool}-${id}`), { force: true });
    } else fail(`unknown thin-pool message ${verb}`);
    save();
    break;
  }
  case 'create': {
    // dmsetup create <name> --table "<start> <length> thin <pool_dev> <dev_id>"
    const [name, flag, table, ...extra] = rest;
    if (flag !== '--table' || table === undefined || extra.length) fail('usage: create <name> --table <table>');
    if (!/^[A-Za-z0-9_.+-]{1,127}$/.test(name)) fail(`invalid device name ${name}`);
    if (state.devices[name]) fail(`${name}: device exists`);
    const t = table.split(' ');
    if (t.length !== 5 || t[2] !== 'thin') fail(`unsupported table "${table}"`);
    if (t[0] !== '0' || !/^[1-9]\d*$/.test(t[1])) fail(`table must start at sector 0 with a positive length: "${table}"`);
    const pool = t[3].replace(/^\/dev\/mapper\//, '');
    if (t[3] !== `/dev/mapper/${pool}` || !state.pools[pool]) fail(`pool device ${t[3]} not found`);
    const id = thinId(t[4]);
    if (!state.pools[pool].thins[id]) fail(`thin id ${id} does not exist in ${pool}`);
    const data = join(dataDir, `${pool}-${id}`);
    const bytes = Number(t[1]) * 512;
    if (statSync(data).size < bytes) truncateSync(data, bytes);
    state.devices[name] = { pool, id, sectors: Number(t[1]), suspended: false };
    symlinkSync(data, join(dmDir, name));
    save();
    break;
  }
  case 'remove': {
    const [name] = rest;
    if (!state.devices[name]) fail(`${name}: no such device`);
    delete state.devices[name];
    rmSync(join(dmDir, name), { force: true });
    save();
    break;
  }
  case 'suspend':
  case 'resume': {
    const [name] = rest;
    if (!state.devices[name]) fail(`${name}: no such device`);
    state.devices[name].suspended = cmd === 'suspend';
    save();
    break;
  }
  case 'info': {
    const [name] = rest;
    if (state.pools[name]) {
      process.stdout.write(`Name: ${name}\nState: ACTIVE\n`);
      break;
    }
    if (!state.devices[name]) fail(`Device does not exist.`);
    process.stdout.write(`Name: ${name}\nState: ${state.devices[name].suspended ? 'SUSPENDED' : 'ACTIVE'}\n`);
    break;
  }
  case 'ls': {
    const names = [...Object.keys(state.pools), ...Object.keys(state.devices)];
    process.stdout.write(names.length ? names.map((n) => `${n}\t(253:0)\n`).join('') : 'No devices found\n');
    break;
  }
  case 'fake-create-pool': {
    // Not a dmsetup command: lets a test set up the pool the host would have.
    state.pools[rest[0]] = { thins: {} };
    save();
    break;
  }
  default:
    fail(`unsupported command ${cmd ?? '(none)'}`, 2);
}
