/**
 * Regenerate docs/asyncapi.yaml and docs/schemas/*.json from the contracts package:
 *   npm run generate -w tools/asyncapi
 * A test (test/generated.unit.spec.ts) fails while the committed files are stale.
 */
import { generate, writeGenerated } from '../src/index.ts';

const changed = await writeGenerated(generate());
console.log(changed.length ? changed.join('\n') : 'docs/asyncapi.yaml and docs/schemas are up to date');
