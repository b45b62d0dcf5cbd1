import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BUNDLE_DIR, buildBrowser, bundleInputs, staleness } from '../scripts/build-browser.mjs';

describe('the page bundle', () => {
  it('is built from the page and the pure job modules only: no Node module, no contracts runtime', async () => {
    await buildBrowser();
    const inputs = (await bundleInputs())!;
    expect(inputs).toEqual(expect.arrayContaining(['src/browser/main.ts', expect.stringMatching(/packages\/jobs\/src\/describe\.ts$/), expect.stringMatching(/uPlot\.esm\.js$/)]));
    expect(inputs.filter((i) => /packages\/(contracts|bus|store)\/|^node:|zod/.test(i))).toEqual([]);
    const js = await readFile(path.join(BUNDLE_DIR, 'app.js'), 'utf8');
    expect(js).not.toMatch(/from\s*["']node:|require\(["']/);
    expect(await staleness()).toBeUndefined();
  });
});
