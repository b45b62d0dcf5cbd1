import { lstat, realpath } from 'node:fs/promises';
import path from 'node:path';
import { OpError } from '@vmsave/ops';

/** Resolve a requested image path inside the image directory, refusing escapes (symlinks included). */
export async function resolveImagePath(imageDir: string, requested: string): Promise<string> {
  const root = await realpath(imageDir);
  const abs = path.resolve(root, requested);
  const rel = path.relative(root, abs);
  if (rel.startsWith('..') || path.isAbsolute(rel) || /[\0\n\r]/.test(requested))
    throw new OpError(`image path ${JSON.stringify(requested)} is outside the image directory`, 'prepare', 'image-path', false);
  const dir = await realpath(path.dirname(abs)).catch(() => undefined);
  if (!dir || path.relative(root, dir).startsWith('..'))
    throw new OpError(`image path ${JSON.stringify(requested)}: its directory does not exist inside the image directory`, 'prepare', 'image-path', false);
  const st = await lstat(abs).catch(() => undefined);
  if (st?.isSymbolicLink()) throw new OpError(`image path ${JSON.stringify(requested)} is a symbolic link; refusing to follow it`, 'prepare', 'image-path', false);
  return path.join(dir, path.basename(abs));
}
