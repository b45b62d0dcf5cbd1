import { mkdir, readdir, readFile, rm, writeFile, rename } from 'node:fs/promises';
import path from 'node:path';

/**
 * What survives a crash of the process running a save or restore: enough to cancel QEMU's
 * migration, resume the VM and close the attempt after a restart ({@link recoverInterrupted}).
 */
export interface JobRecord {
  jobId: string;
  attempt: number;
  fencingToken: number;
  kind: 'save' | 'restore';
  vm?: string;
  imagePath?: string;
  /** Known once the VM is paused: only a VM that was running is resumed after a crash. */
  wasRunning?: boolean;
}

/**
 * One file per operation in flight, `<dir>/<jobId>.json`, written before QEMU is touched and
 * removed when the operation has ended. Whatever is left at start is what a crash interrupted.
 */
export class JobJournal {
  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  pathOf(jobId: string): string {
    return path.join(this.dir, `${jobId}.json`);
  }

  /** Atomic: a crash mid-write leaves the previous record, never half of one. */
  async write(r: JobRecord): Promise<void> {
    const file = this.pathOf(r.jobId);
    await writeFile(`${file}.tmp`, JSON.stringify(r));
    await rename(`${file}.tmp`, file);
  }

  async remove(jobId: string): Promise<void> {
    await rm(this.pathOf(jobId), { force: true });
  }

  /** The records left behind; an unreadable one, or half of a write, is deleted (it cannot be acted on). */
  async list(): Promise<JobRecord[]> {
    const out: JobRecord[] = [];
    const files = await readdir(this.dir);
    for (const f of files.filter((f) => f.endsWith('.json.tmp'))) await rm(path.join(this.dir, f), { force: true });
    for (const f of files.filter((f) => f.endsWith('.json')).sort()) {
      const file = path.join(this.dir, f);
      try {
        const r = JSON.parse(await readFile(file, 'utf8')) as JobRecord;
        if (typeof r.jobId !== 'string' || typeof r.attempt !== 'number' || (r.kind !== 'save' && r.kind !== 'restore')) throw new Error('not a job record');
        out.push(r);
      } catch {
        await rm(file, { force: true });
      }
    }
    return out;
  }
}
