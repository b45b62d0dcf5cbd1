import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Stack } from '@vmsave/e2e';
import { patternVm, uniq } from '@vmsave/testkit';
import { REPO } from '../src/index.ts';

/*
 * A stranger integrates with vmsave: the client code is examples/*.mjs, run as separate Node
 * processes that import only the NATS client, ajv and docs/schemas. The test itself only sets up
 * the real stack (scheduler, verifier, one executor, one real 64 MiB QEMU VM) and reads their output.
 */

let stack: Stack;
let vmName: string;

beforeAll(async () => {
  stack = await Stack.start({ hosts: ['a'] });
  vmName = uniq('stranger').replace(/[^A-Za-z0-9_-]/g, '');
  await stack.startVm('a', await patternVm(stack.dir, vmName, 64));
  await stack.waitForHost('a', [vmName]);
}, 120_000);
afterAll(async () => {
  await stack?.stop();
});

interface Run {
  code: number | null;
  lines: Record<string, unknown>[];
  text: string;
  stderr: string;
}

/** Run an example as its own process, with nothing but the NATS URL from the stack. */
function runExample(file: string, args: string[], timeoutMs = 90_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO, 'examples', file), ...args], {
      cwd: path.join(REPO, 'examples'),
      env: { PATH: process.env.PATH, NATS_URL: stack.env.NATS_URL!, FOLLOW_TIMEOUT_MS: String(timeoutMs - 5000) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b));
    child.stderr.on('data', (b: Buffer) => (err += b));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const lines = out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      resolve({ code, lines, text: out, stderr: err });
    });
  });
}

/** `want` appears in `got` in this order (other entries may sit between). */
function inOrder(got: string[], want: string[]): boolean {
  let i = 0;
  for (const w of want) {
    i = got.indexOf(w, i);
    if (i < 0) return false;
    i++;
  }
  return true;
}

const step = (r: Run, name: string) => r.lines.filter((l) => l.step === name);

describe('a system that speaks only NATS', () => {
  let jobId = '';
  let requestId = '';
  let firstSeq = 0;
  let followed: string[] = [];

  it('publishes a save request, gets the PubAck and the admission answer, and follows the job to ImageVerified', async () => {
    requestId = uniq('stranger-save');
    const r = await runExample('save-and-follow.mjs', ['save', JSON.stringify({ requestId, vm: vmName, format: 'sparse', channels: 2, requestedBy: 'stranger-test' })]);
    const why = `${r.text}\n${r.stderr}\n${await stack.log(`executor:${stack.host('a')}`)}`;
    expect(r.code, why).toBe(0);
    const [ack] = step(r, 'puback');
    expect(ack).toMatchObject({ stream: 'VMSAVE_CMD', duplicate: false });
    jobId = ack!.jobId as string;
    expect(jobId).toMatch(/^s-[0-9a-f]{20}$/);
    expect(step(r, 'admission')[0]).toEqual({ step: 'admission', admission: { outcome: 'accepted', requestId, jobId, duplicate: false } });
    const events = step(r, 'event');
    expect(events.filter((e) => e.invalid)).toEqual([]);
    // In order, ending with the verdict. (Not asserted as exact: on a NATS shared with other
    // deployments, another scheduler may append e.g. a second SaveScheduled; see the report.)
    expect(
      inOrder(
        events.map((e) => e.type as string),
        ['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified'],
      ),
      JSON.stringify(events),
    ).toBe(true);
    expect(events.at(-1)!.type).toBe('ImageVerified');
    expect(events.find((e) => e.type === 'SaveStarted')!.data).toMatchObject({ format: 'sparse', channels: 2, ramBytes: 64 * 1024 * 1024 });
    expect(step(r, 'end')[0]).toMatchObject({ jobId, outcome: 'succeeded', type: 'ImageVerified' });
    firstSeq = events[0]!.seq as number;
    followed = events.map((e) => e.type as string);
  }, 120_000);

  it('a re-publish with the same Nats-Msg-Id is dropped by JetStream (duplicate PubAck) and gets no second answer', async () => {
    const r = await runExample('publish.mjs', [
      'vmsave.cmd.save',
      JSON.stringify({ requestId, vm: vmName, format: 'sparse', channels: 2 }),
      '--msg-id',
      requestId,
      '--answer',
      '--wait-ms',
      '3000',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.lines[0]).toMatchObject({ puback: { stream: 'VMSAVE_CMD', duplicate: true } });
    expect(r.lines[1]).toMatchObject({ answer: null });
  }, 60_000);

  it('tail-events reads the log from a stream sequence, one line per event', async () => {
    const r = await runExample('tail-events.mjs', ['--from-seq', String(firstSeq), '--job', jobId, '--no-follow']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.text.trim().split('\n');
    const types = lines.map((l) => l.split(' ')[3]!);
    expect(types.slice(0, types.indexOf('ImageVerified') + 1)).toEqual(followed);
    expect(lines[0]).toMatch(new RegExp(`^#${firstSeq} \\S+ ${jobId} SaveRequested vm=${vmName} format=sparse by=stranger-test$`));
    expect(lines.join('\n')).not.toContain('!!');
    const json = await runExample('tail-events.mjs', ['--from-seq', String(firstSeq), '--count', '3', '--json']);
    expect(json.code, json.stderr).toBe(0);
    const seqs = json.lines.map((l) => l.seq as number);
    expect(seqs).toHaveLength(3);
    expect(seqs[0]).toBe(firstSeq);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
    expect(json.lines.filter((l) => l.invalid)).toEqual([]);
  }, 60_000);

  it('a request that breaks a rule gets the rule in its admission answer and ends with SaveRejected', async () => {
    const r = await runExample('save-and-follow.mjs', ['save', JSON.stringify({ requestId: uniq('stranger-nope'), vm: 'no-such-vm-anywhere' })]);
    expect(r.code, r.text + r.stderr).toBe(1);
    expect(step(r, 'admission')[0]!.admission).toMatchObject({ outcome: 'rejected', rule: 'vm-exists', field: 'vm' });
    expect(step(r, 'end')[0]).toMatchObject({ outcome: 'ended', type: 'SaveRejected' });
  }, 60_000);
});
