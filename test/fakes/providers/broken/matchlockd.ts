// matchlockd with one more provider, whose construction fails: a start that fails after the
// state dir is made and locked, for the tests of what such a start leaves.
import { PROVIDERS } from '../../../../src/adapters/vmm/registry.js';
import { main } from '../../../../src/daemon/main.js';
import { scratchModule } from '../scratch/index.js';

const broken = { ...scratchModule, create: () => { throw new Error('the broken provider cannot be built'); } };
await main(process.argv, { registry: new Map([...PROVIDERS, ['scratch', broken]]) });
