import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.spec.ts', 'test/**/*.spec.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The integration test boots a QEMU VM; on 2 cores files are kinder run one at a time.
    fileParallelism: false,
  },
});
