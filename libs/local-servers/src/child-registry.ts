// Children this process started, terminated when it exits so no server outlives its parent.
//
// Only a normal exit runs the hook: a parent killed by SIGKILL (or by a signal it has no handler
// for, when the signal was not sent to the whole process group) leaves its servers running.
// Callers that own the process, like `strata up`, should handle SIGINT/SIGTERM and call stop().
import type { ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();
let hooked = false;

function terminateAll(): void {
  // 'exit' handlers run synchronously: signal now, nothing can be awaited. SIGCONT wakes a
  // server a chaos test paused with SIGSTOP so that the SIGTERM takes effect.
  for (const child of live) {
    child.kill('SIGTERM');
    child.kill('SIGCONT');
  }
  live.clear();
}

/** Registers a running child to be sent SIGTERM when this process exits. */
export function trackChild(child: ChildProcess): void {
  live.add(child);
  if (!hooked) {
    hooked = true;
    process.on('exit', terminateAll);
  }
}

/** Forgets a child that has exited. */
export function untrackChild(child: ChildProcess): void {
  live.delete(child);
}
