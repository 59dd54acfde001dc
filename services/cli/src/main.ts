// Entry point of the `strata` command.
import { GgmlError } from '@strata/ggml';
import { GgufError } from '@strata/gguf';
import { KvCacheFullError, ModelError } from '@strata/model';
import { generateCommand } from './commands/generate.ts';
import { logitsCommand } from './commands/logits.ts';
import { modelInfo, modelSynth } from './commands/model.ts';
import { coordinatorCommand, gatewayCommand, workerCommand } from './commands/serve.ts';
import { upCommand } from './commands/up.ts';
import { secretsCommand } from './commands/secrets.ts';
import { drainCommand, undrainCommand } from './commands/drain.ts';
import { migrateCommand, migrationsCommand } from './commands/migrate.ts';
import { sessionsCommand, statusCommand } from './commands/status.ts';
import { ConfigError } from '@strata/config';
import { TelemetryError } from '@strata/telemetry';
import { ClusterError, UsageError } from './errors.ts';

const USAGE = `usage: strata <command> [flags]

commands:
  model synth --out F.gguf [--arch llama|qwen2|qwen3|phi3|exaone4|gemma2|gemma3] [--n-layer N] [--n-embd D] [--n-head H]
              [--n-head-kv K] [--n-ff F] [--n-ctx-train C] [--seed S] [--type f32|f16|q8_0|q4_0|q4_k]
              [--head-scale X] [--vocab V.gguf] [--sliding-window W] [--swa-pattern P]
              [--head-dim D] [--logit-softcap C]
  model info --model F [--split 0:9,9:18 | --stages N] [--json]
  generate [--model F] [--prompt "…"] [--n-predict N] [--split 0:4,4:8] [--threads T]
           [--seed S] [--temperature X] [--top-k K] [--top-p P] [--min-p P]
           [--repeat-penalty X] [--grammar G | --grammar-file F] [--chat] [--ctx-size N]
           [--kv-type f16|f32|q8_0|q4_0] [--kv-host-layers 0,1] [--kv-streams N] [--kv-swa-full true|false] [--device D] [--json]
  logits [--model F] [--prompt "…"] [--split …] [--top K] [--kv-type T] [--json]
  up [--model F] [--workers N] [--pipelines P] [--split even|balanced] [--port 8080] [--prompt "…"] [--max-tokens N] [--kv-streams N]
     [--threads T] [--ctx-size N] [--kv-type T] [--stage-links true|false] [--api-keys-file F] [--once] [--verbose]
  secrets [--dir secrets] [--nats-host nats:4222] [--redis-host redis:6379] [--force]
  worker [--model F] [--layers 0:4] [--id W] [--nats-url U] … (strata worker --help)
  coordinator [--nats-url U] [--redis-url U] … (strata coordinator --help)
  gateway [--port 8080] [--model F] [--nats-url U] … (strata gateway --help)
  status [--json] [--nats-url U]
  sessions [--limit N] [--json] [--nats-url U]
  migrate <session> [--to PIPELINE] [--wait] [--json] [--nats-url U]
  migrations [--limit N] [--json] [--nats-url U]
  drain <worker> [--force] [--nats-url U]
  undrain <worker> [--nats-url U]

Without --model, the embedded default model is synthesized into ~/.cache/strata/models.
`;

/** The services, which print their whole configuration for --help themselves. */
const SERVICES = new Set(['worker', 'coordinator', 'gateway']);

/** USAGE's lines for one command (`model synth`, `up`, …), with their continuation lines; '' when none. */
export function commandUsage(cmd: string, sub?: string): string {
  const lines = USAGE.split('\n');
  const head = cmd === 'model' && sub ? `  model ${sub} ` : `  ${cmd} `;
  const at = lines.findIndex((l) => l.startsWith(head) || l === head.trimEnd());
  if (at < 0) return '';
  const block = [lines[at]!];
  for (let i = at + 1; i < lines.length && /^ {4,}/.test(lines[i]!); i++) block.push(lines[i]!);
  // 'usage: strata ' stands where the two spaces of indent were: continuation lines move with it.
  return `usage: strata ${block[0]!.slice(2)}\n${block.slice(1).map((l) => `${' '.repeat(12)}${l}\n`).join('')}`;
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  // Every command answers --help (the services with their whole configuration, below).
  if (cmd && !SERVICES.has(cmd) && argv.slice(1).some((a) => a === '--help' || a === '-h')) {
    const usage = commandUsage(cmd, cmd === 'model' ? sub : undefined);
    if (usage) {
      out.write(usage);
      return 0;
    }
  }
  try {
    switch (cmd) {
      case 'model':
        if (sub === 'synth') return modelSynth(rest, out);
        if (sub === 'info') return modelInfo(rest, out);
        throw new UsageError(`unknown model subcommand '${sub ?? ''}'`);
      case 'generate':
        return generateCommand(argv.slice(1), out);
      case 'logits':
        return logitsCommand(argv.slice(1), out);
      case 'up':
        return await upCommand(argv.slice(1), out);
      case 'worker':
        return await workerCommand(argv.slice(1), out);
      case 'coordinator':
        return await coordinatorCommand(argv.slice(1), out);
      case 'gateway':
        return await gatewayCommand(argv.slice(1), out);
      case 'migrate':
        return await migrateCommand(argv.slice(1), out);
      case 'migrations':
        return await migrationsCommand(argv.slice(1), out);
      case 'status':
        return await statusCommand(argv.slice(1), out);
      case 'sessions':
        return await sessionsCommand(argv.slice(1), out);
      case 'drain':
        return await drainCommand(argv.slice(1), out);
      case 'secrets':
        return secretsCommand(argv.slice(1), out);
      case 'undrain':
        return await undrainCommand(argv.slice(1), out);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        out.write(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command '${cmd}'`);
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`strata: ${err.message}\n`);
      return 2;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`strata: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    if (err instanceof ClusterError) {
      process.stderr.write(`strata: ${err.message}\n`);
      return 1;
    }
    if (err instanceof GgufError || err instanceof ModelError || err instanceof GgmlError || err instanceof KvCacheFullError || err instanceof TelemetryError) {
      process.stderr.write(`strata: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
