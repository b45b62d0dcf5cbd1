import type { Metafile } from 'esbuild';
/** Packages with native code, left external to the bundle. */
export declare const NATIVE: string[];
/** Bundle src/main.ts into `outdir` (default dist/bin); resolves to esbuild's metafile. */
export declare function bundle(outdir?: string): Promise<Metafile>;
