#!/usr/bin/env node
// The `vmsave` command: runs src/main.ts through tsx (the workspace ships TypeScript sources).
import { register } from 'tsx/esm/api';

register();
await import('../src/main.ts');
