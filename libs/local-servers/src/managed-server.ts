// A server child process: spawned, probed until ready, stopped, and restarted on the same port.
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { trackChild, untrackChild } from './child-registry.ts';
import { LocalServerError } from './errors.ts';
import { OutputTail } from './output-tail.ts';

/** A running local server: where to reach it and how to stop, signal, or restart it. */
export interface LocalServer {
  /** binary name: 'nats-server' or 'redis-server' */
  readonly name: string;
  /** client URL, e.g. nats://127.0.0.1:PORT or redis://127.0.0.1:PORT */
  readonly url: string;
  /** loopback TCP port; stays the same across restart() */
  readonly port: number;
  /** pid of the current process; changes on restart(), undefined once it has exited */
  readonly pid: number | undefined;
  /** whether the process is alive (it may still be SIGSTOPped) */
  readonly running: boolean;
  /** SIGTERM (and SIGCONT), wait for exit, SIGKILL after the stop timeout. Idempotent. */
  stop(): Promise<void>;
  /** Sends `signal` (SIGKILL by default) to the process without waiting; false when none is running. */
  kill(signal?: NodeJS.Signals): boolean;
  /** Stops the process if it runs, then starts it again with the same config and port, ready. */
  restart(): Promise<void>;
  /** Last lines the process printed on stdout and stderr. */
  output(lines?: number): string;
}

/** What {@link launchServer} runs and how it tells that the server is ready. */
export interface LaunchSpec {
  /** binary name for messages, e.g. 'redis-server' */
  name: string;
  /** absolute path of the executable */
  binary: string;
  args: string[];
  cwd: string;
  url: string;
  port: number;
  /** one readiness check: true once the server answers on `port`; must not throw */
  probe: (port: number, timeoutMs: number) => Promise<boolean>;
  /** ms from spawn until the probe must have succeeded */
  startTimeoutMs: number;
  /** ms stop() waits after SIGTERM before SIGKILL */
  stopTimeoutMs: number;
}

/** How a child process ended: an exit code or signal, or a spawn error. */
type Ended = { code: number | null; signal: NodeJS.Signals | null } | { error: Error };

/** ms between readiness probes */
const PROBE_INTERVAL_MS = 50;
/** ms one probe may take at most */
const PROBE_TIMEOUT_MS = 1000;

/** Resolves true once `promise` settles, or false after `ms`, leaving no timer behind either way. */
function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    const done = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    promise.then(done, done);
  });
}

function describeEnd(end: Ended): string {
  if ('error' in end) return `failed to spawn: ${end.error.message}`;
  return end.signal !== null ? `was killed by ${end.signal}` : `exited with code ${String(end.code)}`;
}

class ManagedServer implements LocalServer {
  readonly name: string;
  readonly url: string;
  readonly port: number;
  readonly #spec: LaunchSpec;
  readonly #tail = new OutputTail();
  #child: ChildProcess | undefined;
  #ended: Promise<Ended> | undefined; // of #child
  #stopping: Promise<void> | undefined;
  #restarting: Promise<void> | undefined;

  constructor(spec: LaunchSpec) {
    this.#spec = spec;
    this.name = spec.name;
    this.url = spec.url;
    this.port = spec.port;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  output(lines = 20): string {
    return this.#tail.lines(lines);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): boolean {
    return this.#child?.kill(signal) ?? false;
  }

  stop(): Promise<void> {
    if (this.#stopping !== undefined) return this.#stopping;
    const child = this.#child;
    const ended = this.#ended;
    if (child === undefined || ended === undefined) return Promise.resolve();
    this.#stopping = (async () => {
      child.kill('SIGTERM');
      child.kill('SIGCONT'); // a SIGSTOPped server only acts on SIGTERM once resumed
      if (!(await settlesWithin(ended, this.#spec.stopTimeoutMs))) {
        child.kill('SIGKILL');
        await ended;
      }
    })().finally(() => {
      this.#stopping = undefined;
    });
    return this.#stopping;
  }

  restart(): Promise<void> {
    // Concurrent calls share one restart: two processes must never race for the port.
    this.#restarting ??= (async () => {
      await this.stop();
      await this.start();
    })().finally(() => {
      this.#restarting = undefined;
    });
    return this.#restarting;
  }

  /** Spawns the process and resolves once the probe succeeds; throws LocalServerError otherwise. */
  async start(): Promise<void> {
    const { name, binary, args, cwd, port, probe, startTimeoutMs } = this.#spec;
    const child = spawn(binary, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: false });
    const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    const ended = new Promise<Ended>((resolve) => {
      child.once('error', (error) => resolve({ error }));
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    this.#child = child;
    this.#ended = ended;
    if (child.pid !== undefined) trackChild(child);
    child.stdout?.on('data', (chunk: Buffer) => this.#tail.push(chunk));
    child.stderr?.on('data', (chunk: Buffer) => this.#tail.push(chunk));
    let end: Ended | undefined;
    void ended.then((e) => {
      end = e;
      untrackChild(child);
      if (this.#child === child) {
        this.#child = undefined;
        this.#ended = undefined;
      }
    });

    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      const probeMs = Math.max(1, Math.min(PROBE_TIMEOUT_MS, deadline - Date.now()));
      const ready = end === undefined && (await Promise.race([probe(port, probeMs), ended.then(() => false)]));
      if (end !== undefined) {
        await settlesWithin(closed, 500); // let the last output arrive
        const output = this.output();
        const code = 'error' in end ? 'spawn_failed' : 'exited';
        throw new LocalServerError(code, `${name} ${describeEnd(end)} while starting on port ${port}${output ? `:\n${output}` : ''}`, { server: name, output });
      }
      if (ready) return;
      if (Date.now() >= deadline) {
        await this.stop();
        const output = this.output();
        throw new LocalServerError('start_timeout', `${name} did not answer on port ${port} within ${startTimeoutMs} ms${output ? `:\n${output}` : ''}`, { server: name, output });
      }
      await Promise.race([sleep(PROBE_INTERVAL_MS), ended]);
    }
  }
}

/** Spawns a server process and resolves once it is ready; a failed start leaves nothing running. */
export async function launchServer(spec: LaunchSpec): Promise<LocalServer> {
  const server = new ManagedServer(spec);
  await server.start();
  return server;
}
