// The id clients name a model by.
import { basename } from 'node:path';

/** A GGUF path's model id: its file name without .gguf, with characters outside [A-Za-z0-9_.-] as '-'. */
export function modelIdOf(path: string): string {
  return basename(path).replace(/\.gguf$/i, '').replace(/[^A-Za-z0-9_.-]/g, '-');
}
