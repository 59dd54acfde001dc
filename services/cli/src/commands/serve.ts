// strata worker | coordinator | gateway: each service on its own, configured by flags, STRATA_*
// environment or --config file, until SIGINT or SIGTERM, then a draining stop.
import { describeConfig, type Schema } from '@strata/config';
import { Coordinator, coordinatorConfig, coordinatorSchema } from '@strata/coordinator';
import { Gateway, gatewayConfig, gatewaySchema } from '@strata/gateway';
import { createLogger, type Level, type Logger } from '@strata/log';
import { startTelemetry, type TelemetryOptions } from '@strata/telemetry';
import { Worker, workerConfig, workerSchema } from '@strata/worker';

/** Something that runs until stopped. */
interface Service {
  stop(): Promise<void>;
  /** rejects if the service fails on its own (then it has stopped, and the process exits 1) */
  failed?: Promise<never>;
}

/** Resolves on the first SIGINT or SIGTERM. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (s: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(s);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

/**
 * Resolves when the process that started this one is gone (this one was handed to init), for a
 * service started with STRATA_EXIT_WITH_PARENT=1 (`strata up`'s: a killed `strata up` leaves no
 * service behind); never otherwise.
 */
function untilParentGone(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (env.STRATA_EXIT_WITH_PARENT !== '1') return new Promise<void>(() => {});
  const parent = process.ppid;
  return new Promise((resolve) => {
    const t = setInterval(() => {
      if (process.ppid === parent) return;
      clearInterval(t);
      resolve();
    }, 1000);
    t.unref();
  });
}

/** Telemetry of a service process: started before the service, flushed after it stopped. */
interface ServeTelemetry {
  options: TelemetryOptions;
  log: Logger;
}

async function serve<S extends Service>(start: () => Promise<S>, out: NodeJS.WritableStream, ready?: (s: S) => string, graceful: (s: S) => Promise<void> = (s) => s.stop(), telemetry?: ServeTelemetry): Promise<number> {
  // Before the service: its meters are taken from the provider registered here.
  const tel = telemetry ? await startTelemetry(telemetry.options, telemetry.log) : null;
  let service: S;
  try {
    service = await start();
  } catch (err) {
    await tel?.shutdown();
    throw err;
  }
  if (ready) out.write(`${ready(service)}\n`);
  try {
    await Promise.race([untilSignal(), untilParentGone(), service.failed ?? new Promise<never>(() => {})]);
  } catch {
    await service.stop();
    await tel?.shutdown();
    return 1;
  }
  // A second signal cuts the graceful stop short.
  void untilSignal().then(() => process.exit(1));
  await graceful(service);
  await tel?.shutdown();
  return 0;
}

function help(argv: string[], name: string, schema: Schema, out: NodeJS.WritableStream): boolean {
  if (!argv.includes('--help') && !argv.includes('-h')) return false;
  out.write(`usage: strata ${name} [flags] [--config file.json]\n\n${describeConfig(schema)}\n`);
  return true;
}

const level = (l: string): Level | 'none' => (['debug', 'info', 'warn', 'error', 'none'].includes(l) ? (l as Level) : 'info');

/** `strata worker --model F --layers 0:4 …` */
export function workerCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  if (help(argv, 'worker', workerSchema, out)) return Promise.resolve(0);
  const c = workerConfig({ argv });
  const log = createLogger('worker', { level: level(c.logLevel) });
  return serve(() => Worker.start(c, log), out, undefined, (w) => w.handOff(c.drainMs), { options: c.telemetry, log });
}

/** `strata coordinator --nats-url … --redis-url …` */
export function coordinatorCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  if (help(argv, 'coordinator', coordinatorSchema, out)) return Promise.resolve(0);
  const c = coordinatorConfig({ argv });
  const log = createLogger('coordinator', { level: level(c.logLevel) });
  return serve(() => Coordinator.start(c, log), out, undefined, undefined, { options: c.telemetry, log });
}

/** `strata gateway --port 8080 --model F …` */
export function gatewayCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  if (help(argv, 'gateway', gatewaySchema, out)) return Promise.resolve(0);
  const c = gatewayConfig({ argv });
  const log = createLogger('gateway', { level: level(c.logLevel) });
  return serve(() => Gateway.start(c, log), out, (g) => g.url, undefined, { options: c.telemetry, log });
}
