import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.spec.ts', 'test/**/*.spec.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Each integration file boots its own QEMU VMs; on 2 cores they are kinder run one at a time.
    fileParallelism: false,
  },
});
