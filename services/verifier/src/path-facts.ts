import { constants } from 'node:fs';
import { access, realpath, stat } from 'node:fs/promises';
import type { PathFacts } from './decisions.ts';

/**
 * What the file system says about an image path before it is read (decisions.ts `preCheck`
 * judges it): readable, its real path, whether that is a regular file, and the host's announced
 * image directories (asked only when the file is readable).
 */
export async function pathFacts(imagePath: string, host: string, imageDirsOf: (host: string) => Promise<string[]>): Promise<PathFacts> {
  const readable = await access(imagePath, constants.R_OK).then(
    () => true,
    () => false,
  );
  const realPath = readable ? await realpath(imagePath).catch(() => undefined) : undefined;
  const regularFile = realPath
    ? await stat(realPath).then(
        (s) => s.isFile(),
        () => false,
      )
    : undefined;
  return { imagePath, readable, realPath, regularFile, imageDirs: readable ? await imageDirsOf(host) : [], host };
}
