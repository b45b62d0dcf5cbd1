import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { run } from '../src/cli.ts';
import { Ctx } from '../src/context.ts';
import { definitionFromCmdline, parseMemoryMiB, parseQemuOpts } from '../src/cmdline.ts';
import { EXIT, UsageError } from '../src/errors.ts';
import { bool, int, oneOf, str } from '../src/options.ts';
import { table } from '../src/terminal.ts';
import { lines, vmsave } from './helpers.ts';

async function cli(args: string[], env: Record<string, string> = {}) {
  const out = new PassThrough();
  const err = new PassThrough() as unknown as NodeJS.WriteStream;
  let stdout = '';
  let stderr = '';
  out.on('data', (d) => (stdout += d));
  (err as unknown as PassThrough).on('data', (d: Buffer) => (stderr += d));
  const code = await run(args, new Ctx(out, err, { ...env }));
  return { code, stdout, stderr };
}

describe('definitionFromCmdline', () => {
  const argv = [
    '/usr/bin/qemu-system-x86_64',
    '-S',
    '-nodefaults',
    '-no-user-config',
    '-name',
    'guest=web-1,debug-threads=on',
    '-uuid',
    '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
    '-machine',
    'pc-q35-10.0,accel=kvm,usb=off',
    '-m',
    'size=512M,slots=2,maxmem=1G',
    '-smp',
    '2,sockets=1,cores=2',
    '-display',
    'none',
    '-daemonize',
    '-pidfile',
    '/run/x.pid',
    '-chardev',
    'socket,id=charmonitor,path=/run/mon.sock,server=on,wait=off',
    '-mon',
    'chardev=charmonitor,id=monitor,mode=control',
    '-chardev',
    'pty,id=serial0',
    '-device',
    'isa-serial,chardev=serial0',
    '-qmp',
    'unix:/run/q.sock,server=on,wait=off',
    '-incoming',
    'defer',
    '-device',
    'virtio-rng-pci',
    '-object',
    'memory-backend-ram,id=m0,size=1M',
  ];

  it('keeps machine, memory, vCPUs and devices, and drops what vmsave sets itself', () => {
    const { definition: d, dropped, warnings } = definitionFromCmdline(argv);
    expect(d).toMatchObject({ name: 'web-1', uuid: '1b4e28ba-2fa1-11d2-883f-0016d3cca427', machine: 'pc-q35-10.0', memoryMiB: 512, vcpus: 2 });
    expect(d.args).toEqual([
      '-machine',
      'usb=off',
      '-m',
      'slots=2,maxmem=1G',
      '-smp',
      'sockets=1,cores=2',
      '-chardev',
      'pty,id=serial0',
      '-device',
      'isa-serial,chardev=serial0',
      '-device',
      'virtio-rng-pci',
      '-object',
      'memory-backend-ram,id=m0,size=1M',
    ]);
    expect(dropped).toEqual(
      expect.arrayContaining([
        '-S',
        '-daemonize',
        '-incoming defer',
        '-pidfile /run/x.pid',
        '-mon chardev=charmonitor,id=monitor,mode=control',
        '-qmp unix:/run/q.sock,server=on,wait=off',
      ]),
    );
    expect(d.args.join(' ')).not.toMatch(/charmonitor|accel|incoming|-S\b|qmp/);
    expect(warnings).toEqual([]);
  });

  it("defaults: a new uuid, the fallback name, QEMU's default memory; warns without -nodefaults", () => {
    const { definition: d, warnings } = definitionFromCmdline(['qemu-system-x86_64', '-machine', 'q35', '-m', '1G'], 'from-socket');
    expect(d.name).toBe('from-socket');
    expect(d.uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(d.memoryMiB).toBe(1024);
    expect(warnings.join()).toMatch(/-nodefaults/);
  });

  it('reads QEMU option syntax', () => {
    expect(parseQemuOpts('q35,,x,accel=kvm', 'type')).toEqual(
      new Map([
        ['type', 'q35,x'],
        ['accel', 'kvm'],
      ]),
    );
    expect([parseMemoryMiB('128'), parseMemoryMiB('2G'), parseMemoryMiB('size=64M'), parseMemoryMiB('524288k')]).toEqual([128, 2048, 64, 512]);
    expect(() => parseMemoryMiB('lots')).toThrow(/memory size/);
  });
});

describe('terminal output', () => {
  it('pads tables', () => {
    expect(table(['a', 'bb'], [['xxx', '1']], { right: [1] })).toBe('a    bb\n---  --\nxxx   1\n');
  });
});

describe('arguments', () => {
  it.each([
    [['save', '--vm', 'x', '--format', 'zip'], /--format must be one of legacy, sparse, auto, got "zip"/],
    [['save', '--vm', 'x', '--replicate', 's3'], /--replicate must be one of bus, none, got "s3"/],
    [['save', '--vm', 'x', '--channels', '65'], /--channels must be between 1 and 64, got 65/],
    [['save', '--vm', 'x', '--channels', '0'], /--channels must be between 1 and 64/],
    [['save', '--vm', 'bad name!'], /VM name/],
    [['save'], /give --vm NAME/],
    [['save', '--vm', 'x', '--bogus'], /Unknown option '--bogus'/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [['vm'], /give a sub-command \(list, create, start\)/],
    [['restore'], /missing IMAGE/],
    [['restore', 'x.vmsave', '--host', 'h', '--verify', 'ram'], /--verify must be one of state, full, got "ram"/],
    [['restore', 'x.vmsave', '--local', '--verify', 'ram'], /--verify must be one of state, full, got "ram"/],
    [['job', 'a', 'b'], /unexpected argument "b"/],
    [['vm', 'create', '--name', 'x', '--memory', '8'], /--memory must be between 16/],
  ])('%j is a usage error: one line, exit 2', async (args, message) => {
    const r = await cli(args);
    expect(r.code).toBe(EXIT.usage);
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toMatch(/^vmsave: /);
    expect(r.stderr).toMatch(message);
  });

  it('--json errors are a JSON document too', async () => {
    const r = await cli(['save', '--vm', 'x', '--format', 'zip', '--json']);
    expect(r.code).toBe(EXIT.usage);
    expect(JSON.parse(r.stdout)).toEqual({ error: { message: expect.stringContaining('--format'), exitCode: 2, kind: 'UsageError' } });
  });

  it('--help everywhere', async () => {
    const main = await cli(['--help']);
    expect(main.code).toBe(0);
    expect(main.stdout).toMatch(/exit codes: 0 ok/);
    for (const c of ['save', 'restore', 'cancel', 'jobs', 'job', 'watch', 'hosts', 'inspect', 'verify', 'demo']) {
      const r = await cli([c, '--help']);
      expect(r.code, c).toBe(0);
      expect(r.stdout, c).toMatch(new RegExp(`^usage: vmsave ${c}`));
    }
    expect((await cli(['vm', 'create', '--help'])).stdout).toMatch(/--arg A/);
    expect((await cli(['jobs', '--help'])).stdout).toMatch(/--state S +only these states \(requested, scheduled, .*cancelled\)/);
    expect((await cli([])).code).toBe(EXIT.usage);
  });

  it('int, oneOf, str and bool read parsed options; a bad value names the flag and the rule', () => {
    const v = { channels: '4', format: 'sparse', wait: true, big: '99', frac: '1.5' };
    expect([
      int(v, 'channels', { min: 1, max: 64 }),
      oneOf(v, 'format', ['legacy', 'sparse'] as const),
      str(v, 'format'),
      bool(v, 'wait'),
      bool(v, 'format'),
      int(v, 'none', { min: 0, max: 1 }),
    ]).toEqual([4, 'sparse', 'sparse', true, false, undefined]);
    expect(() => int(v, 'big', { min: 1, max: 64 })).toThrow(new UsageError('--big must be between 1 and 64, got 99'));
    expect(() => int(v, 'frac', { min: 1, max: 64 })).toThrow(/--frac needs a whole number, got "1.5"/);
    expect(() => oneOf(v, 'format', ['legacy'] as const)).toThrow(/--format must be one of legacy, got "sparse"/);
  });
});

describe('module graph', () => {
  const src = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src');
  const importsOf = (file: string) => [...readFileSync(file, 'utf8').matchAll(/(?:from|import\()\s*'([^']+)'/g)].map((m) => m[1]!);

  it('cli.ts imports the commands, the commands import options.ts, never cli.ts', () => {
    expect(importsOf(path.join(src, 'cli.ts'))).toEqual(
      expect.arrayContaining(['./options.ts', './commands/bus.ts', './commands/image.ts', './commands/vm.ts', './commands/demo.ts']),
    );
    for (const dir of ['commands', 'run']) {
      for (const f of readdirSync(path.join(src, dir))) expect(importsOf(path.join(src, dir, f)), `${dir}/${f}`).not.toContain('../cli.ts');
    }
    expect(importsOf(path.join(src, 'options.ts')).filter((i) => i.includes('commands') || i.includes('cli.ts'))).toEqual([]);
  });
});

describe('the bin', () => {
  it('an unreachable bus is exit 5 with one line', async () => {
    const r = await vmsave(['hosts'], { NATS_URL: 'nats://127.0.0.1:9', VMSAVE_NATS_PASS_CLIENT: '' });
    expect(r.code).toBe(EXIT.unreachable);
    expect(lines(r.stderr)).toEqual([expect.stringMatching(/^vmsave: cannot connect to NATS at nats:\/\/127\.0\.0\.1:9/)]);
  });
});
