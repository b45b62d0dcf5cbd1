/** Write infra/nats/nats.conf from permissions.ts (run after changing a role's permissions). */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { renderNatsConf } from './permissions.ts';

const target = fileURLToPath(new URL('./nats.conf', import.meta.url));
writeFileSync(target, renderNatsConf());
console.log(`wrote ${target}`);
