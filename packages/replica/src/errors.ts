/** Why an upload or download did not finish: a stable `code` (carried by the failure events) and a sentence. */
export type ReplicaErrorCode =
  | 'replica-missing' // no complete object set under the key
  | 'replica-incomplete' // a part is missing or shorter than the manifest says
  | 'replica-checksum' // an extent's CRC-32 differs from the manifest's
  | 'replica-header' // the rebuilt file's header and descriptor differ from the manifest's
  | 'replica-seal' // the rebuilt file fails its own seal
  | 'replica-exists' // the destination file is already there
  | 'replica-source' // the source is not a complete vmsave image
  | 'replica-aborted'
  | 'replica-io';

export class ReplicaError extends Error {
  constructor(
    readonly code: ReplicaErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ReplicaError';
  }
}

/** The code of any error an upload or download threw (`replica-io` for one that is not a ReplicaError). */
export function replicaCodeOf(err: unknown): string {
  if (err instanceof ReplicaError) return err.code;
  const code = typeof err === 'object' && err !== null && 'code' in err ? (err as { code: unknown }).code : undefined;
  return typeof code === 'string' && /^E[A-Z]+$/.test(code) ? code : 'replica-io';
}

export const abortError = (signal: AbortSignal): ReplicaError =>
  new ReplicaError('replica-aborted', `aborted: ${signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'signal')}`, { cause: signal.reason });
