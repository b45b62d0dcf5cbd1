import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // One file at a time: the browser test wants the machine's two cores to itself.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
