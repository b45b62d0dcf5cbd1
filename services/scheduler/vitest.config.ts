import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // The wiring test starts the scheduler as its own process: give it time on a busy machine.
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
