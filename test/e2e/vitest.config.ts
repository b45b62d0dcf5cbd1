import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Rows of docs/reliability.md: collected from every spec of this run, written at its end.
    globalSetup: ['./src/reliability-setup.ts'],
  },
});
