import { readFile, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';

/** The process that serves a QMP socket. */
export interface QmpServerProcess {
  pid: number;
  /** argv of the process, from /proc/PID/cmdline. */
  cmdline: string[];
}

/** One row of /proc/net/unix. */
export interface UnixSocketEntry {
  inode: number;
  listening: boolean;
  path: string | undefined;
}

const SO_ACCEPTCON = 0x10000;

/** Parses /proc/net/unix. Pure, for tests. */
export function parseProcNetUnix(text: string): UnixSocketEntry[] {
  const entries: UnixSocketEntry[] = [];
  for (const line of text.split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode [Path] — the path may contain spaces.
    const match = /^\s*[0-9a-f]+:\s+[0-9A-F]+\s+[0-9A-F]+\s+([0-9A-F]+)\s+[0-9A-F]+\s+[0-9A-F]+\s+(\d+)(?: (.*))?$/i.exec(line);
    if (!match) continue;
    const flags = Number.parseInt(match[1] ?? '0', 16);
    entries.push({
      inode: Number(match[2]),
      listening: (flags & SO_ACCEPTCON) !== 0,
      path: match[3],
    });
  }
  return entries;
}

/**
 * Finds the process listening on a QMP unix socket, without connecting to it
 * (a QMP socket serves one client at a time): the listening socket's inode
 * from /proc/net/unix, then the process whose /proc/PID/fd links to
 * `socket:[inode]`. Returns undefined when nothing (visible to us) listens
 * there. Linux only; needs permission to read other processes' fd tables
 * (root, or the same user).
 */
export async function findQmpServerProcess(socketPath: string): Promise<QmpServerProcess | undefined> {
  const wanted = new Set([socketPath, path.resolve(socketPath)]);
  const table = parseProcNetUnix(await readFile('/proc/net/unix', 'utf8'));
  const inodes = new Set(table.filter((e) => e.listening && e.path !== undefined && wanted.has(e.path)).map((e) => `socket:[${e.inode}]`));
  if (inodes.size === 0) return undefined;

  const pids = (await readdir('/proc')).filter((name) => /^\d+$/.test(name));
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = await readlink(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (inodes.has(target)) {
        return { pid: Number(pid), cmdline: await readCmdline(Number(pid)) };
      }
    }
  }
  return undefined;
}

/** argv of a process, from /proc/PID/cmdline (NUL-separated). */
export async function readCmdline(pid: number): Promise<string[]> {
  const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
  const parts = raw.split('\0');
  if (parts.at(-1) === '') parts.pop();
  return parts;
}
