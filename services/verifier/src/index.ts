export { Verifier, VERIFY_ACK_WAIT_MS } from './verifier.ts';
export { startVerifier, type VerifierService } from './service.ts';
export { SOURCE, PRE_CHECKS, hostFilter, planVerification, preCheck, checksOf, trustedFingerprint, recordVerification, type Plan, type PathFacts } from './decisions.ts';
export { loadConfig, VerifierEnv, type VerifierConfig } from './config.ts';
