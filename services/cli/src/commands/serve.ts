// strata worker | coordinator | gateway: each service on its own, configured by flags, STRATA_*
// environment or --config file, until SIGINT or SIGTERM, then a draining stop.
import { describeConfig, type Schema } from '@strata/config';
import { Coordinator, coordinatorConfig, coordinatorSchema } from '@strata/coordinator';
import { Gateway, gatewayConfig, gatewaySchema } from '@strata/gateway';
import { createLogger, type Level } from '@strata/log';
import { Worker, workerConfig, workerSchema } from '@strata/worker';

/** Something that runs until stopped. */
interface Service {
  stop(): Promise<void>;
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

async function serve(start: () => Promise<Service>, out: NodeJS.WritableStream, ready?: (s: Service) => string): Promise<number> {
  const service = await start();
  if (ready) out.write(`${ready(service)}\n`);
  await untilSignal();
  await service.stop();
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
  return serve(() => Worker.start(c, createLogger('worker', { level: level(c.logLevel) })), out);
}

/** `strata coordinator --nats-url … --redis-url …` */
export function coordinatorCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  if (help(argv, 'coordinator', coordinatorSchema, out)) return Promise.resolve(0);
  const c = coordinatorConfig({ argv });
  return serve(() => Coordinator.start(c, createLogger('coordinator', { level: level(c.logLevel) })), out);
}

/** `strata gateway --port 8080 --model F …` */
export function gatewayCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  if (help(argv, 'gateway', gatewaySchema, out)) return Promise.resolve(0);
  const c = gatewayConfig({ argv });
  return serve(() => Gateway.start(c, createLogger('gateway', { level: level(c.logLevel) })), out, (g) => (g as Gateway).url);
}
