import { unlink } from 'node:fs/promises';
import { abandonMigration, resume } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';
import type { JobRecord } from './journal.ts';

export interface RecoveryResult {
  /** The VM runs again (it was running, or its state was unknown, when the crash came). */
  vmResumed: boolean;
  /** QEMU's migration status found (`unknown` when the VM could not be reached). */
  migration: string;
  /** Why the VM could not be reached, when it could not. */
  error?: string;
}

/**
 * Undo what an operation interrupted by a crash left behind: the migration is cancelled and
 * every fdset removed (the qemu package's `abandonMigration`), a VM that was running is resumed
 * (one whose state was never recorded is resumed too: a paused running VM is the worse
 * mistake), and a save's partial image is deleted. Publishing what happened is the caller's.
 */
export async function recoverInterrupted(r: JobRecord, o: { qmpSocketPath?: string; timeoutMs?: number }): Promise<RecoveryResult> {
  let vmResumed = false;
  let migration = 'unknown';
  let error: string | undefined;
  if (r.vm && o.qmpSocketPath) {
    try {
      await using qmp = await QmpClient.connect(o.qmpSocketPath, { timeoutMs: o.timeoutMs ?? 3000 });
      migration = (await abandonMigration(qmp)).status;
      if (r.wasRunning !== false) {
        await resume(qmp);
        vmResumed = true;
      }
    } catch (err) {
      error = (err as Error).message;
    }
  }
  if (r.imagePath && r.kind === 'save') await unlink(r.imagePath).catch(() => undefined);
  return { vmResumed, migration, error };
}
