import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.spec.ts', 'test/**/*.spec.ts'],
    // Real QEMU saves and restores through child processes: also under a bare `npx vitest run`.
    testTimeout: 300_000,
    hookTimeout: 180_000,
    // Integration files boot real QEMU VMs; on 2 cores they are kinder run one at a time.
    fileParallelism: false,
  },
});
