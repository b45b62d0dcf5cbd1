/** Types of `build-browser.mjs` (the build script stays plain JavaScript so it runs without tsx). */
export declare const BUNDLE_DIR: string;
export declare function buildBrowser(): Promise<{ outfile: string; inputs: number }>;
export declare function staleness(): Promise<string | undefined>;
export declare function bundleInputs(): Promise<string[] | undefined>;
export declare function ensureBrowserBundle(): Promise<{ built: boolean; why?: string; dir: string }>;
