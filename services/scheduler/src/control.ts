import { messages, subjects } from '@vmsave/contracts';
import { requestValidated, type Bus, type Logger } from '@vmsave/bus';

/**
 * Ask the executor on `host` to cancel a job (core request/reply on `vmsave.control.<host>`).
 * Never throws: with no answer, the heartbeat watchdog closes the job if the executor is gone.
 */
export async function askExecutorToCancel(bus: Bus, log: Logger, host: string, jobId: string, reason: string): Promise<void> {
  try {
    const r = await requestValidated(bus, messages.controlRequest, subjects.control(host), { action: 'cancel', jobId, reason }, messages.controlReply, { timeoutMs: 5000 });
    log.info({ jobId, host, ok: r.ok }, `executor answered cancel: ${r.message}`);
  } catch (err) {
    log.warn({ jobId, host, err: (err as Error).message }, 'executor did not answer the cancel');
  }
}
