/** The page's entry point (bundled by `scripts/build-browser.mjs` into `dist/public/app.js`). */
import { start } from './app.ts';

void start();
