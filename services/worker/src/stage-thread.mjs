// Entry of a worker's stage thread: registers the TypeScript loader in this thread (a worker
// thread does not inherit the main thread's), then runs stage-thread.ts.
import { register } from 'tsx/esm/api';

register();
await import('./stage-thread.ts');
