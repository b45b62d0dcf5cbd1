/**
 * @vmsave/client — the vmsave client library: submit save, restore and cancel requests over the
 * bus, get the scheduler's admission answer, and follow a job's events and progress.
 */
export { VmsaveClient, type AdmissionOptions, type Submitted, type WaitOptions } from './client.ts';
export { ClientError, JobWaitTimeout } from './errors.ts';
