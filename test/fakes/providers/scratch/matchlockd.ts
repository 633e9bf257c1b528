// matchlockd with one more provider: the registry plus the scratch provider's line.
import { PROVIDERS } from '../../../../src/adapters/vmm/registry.js';
import { main } from '../../../../src/daemon/main.js';
import { scratchModule } from './index.js';

await main(process.argv, { registry: new Map([...PROVIDERS, ['scratch', scratchModule]]) });
