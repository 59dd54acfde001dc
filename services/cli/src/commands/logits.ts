// strata logits: teacher-forced top-K logits at every position of a prompt.
import { Vocab } from '@strata/ggml';
import { scoreAll, topK } from '@strata/model';
import { Flags, parseArgs } from '../args.ts';
import { openPipelineFromFlags } from './common.ts';

/** `strata logits --model F --prompt "…" [--split …] --top K [--json]` */
export function logitsCommand(argv: string[], out: NodeJS.WritableStream): number {
  const f = new Flags(parseArgs(argv, ['json']));
  const prompt = f.str('prompt', 'Once upon a time')!;
  const k = f.int('top', 5)!;
  const json = f.bool('json');
  const { path, pipeline } = openPipelineFromFlags(f);
  f.done();
  const vocab = Vocab.load(path);
  try {
    const tokens = vocab.tokenize(prompt, true, true);
    const rows = scoreAll(pipeline, tokens);
    const positions = rows.map((row, i) => ({ pos: i, token: tokens[i]!, top: topK(row, k) }));
    if (json) {
      out.write(`${JSON.stringify({ tokens: Array.from(tokens), positions: positions.map((p) => ({ pos: p.pos, token: p.token, top: p.top.map((t) => [t.token, t.logit]) })) })}\n`);
    } else {
      for (const p of positions) {
        const tops = p.top.map((t) => `${JSON.stringify(vocab.detokenize([t.token]))}=${t.logit.toFixed(3)}`).join(' ');
        out.write(`${String(p.pos).padStart(4)} ${JSON.stringify(vocab.detokenize([p.token])).padEnd(14)} ${tops}\n`);
      }
    }
    return 0;
  } finally {
    vocab.dispose();
    pipeline.dispose();
  }
}
