export { Verifier } from './verifier.ts';
export { loadConfig, VerifierEnv, type VerifierConfig } from './config.ts';
