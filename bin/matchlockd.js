#!/usr/bin/env node
// Runs the TypeScript sources through tsx, so there is no build step to forget.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/daemon/main.ts');
await main(process.argv);
