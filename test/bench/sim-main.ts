// A process of simulated stages (sim-stages.ts), forked by the scale bench: argv[2] is the
// options as JSON (stepMs as {base, perToken} milliseconds), STRATA_NATS_URL the server. It
// answers 'report' messages with its counters, its CPU time and the turnaround samples since the
// last report.
import { connect } from 'nats';
import { natsOptions } from '@strata/wire';
import { SimStages, type SimOptions } from './sim-stages.ts';

const raw = JSON.parse(process.argv[2]!) as Omit<SimOptions, 'stepMs'> & { stepMs: { base: number; perToken: number } };
const nc = await connect({ ...natsOptions(process.env.STRATA_NATS_URL!, 'strata-sim'), maxReconnectAttempts: 0 });
const sim = new SimStages(nc, { ...raw, stepMs: (n) => raw.stepMs.base + raw.stepMs.perToken * n });
process.on('message', (m: string) => {
  if (m === 'report') {
    const cpu = process.cpuUsage();
    process.send!({ counters: sim.counters, cpuMs: (cpu.user + cpu.system) / 1000, turnaround: sim.turnaround.splice(0) });
  } else if (m === 'stop') {
    sim.stop();
    void nc.close().then(() => process.exit(0));
  }
});
process.send!('ready');
