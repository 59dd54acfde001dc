// strata generate: generation in one process, stages chained as workers chain them.
import { readFileSync } from 'node:fs';
import { Vocab } from '@strata/ggml';
import { generate } from '@strata/model';
import { Flags, parseArgs } from '../args.ts';
import { openPipelineFromFlags } from './common.ts';

/** `strata generate --model F --prompt "…" --n-predict N [--split …] [--json] …` */
export function generateCommand(argv: string[], out: NodeJS.WritableStream): number {
  const f = new Flags(parseArgs(argv, ['json', 'chat']));
  const prompt = f.str('prompt', 'Once upon a time')!;
  const nPredict = f.int('n-predict', 32)!;
  const json = f.bool('json');
  const chat = f.bool('chat');
  const grammarFile = f.str('grammar-file');
  const sampling = {
    seed: f.int('seed', 42),
    temperature: f.num('temperature', 0),
    topK: f.int('top-k', 40),
    topP: f.num('top-p', 0.95),
    minP: f.num('min-p', 0.05),
    repeatPenalty: f.num('repeat-penalty', 1),
    grammar: grammarFile ? readFileSync(grammarFile, 'utf8') : f.str('grammar'),
  };
  const { path, pipeline } = openPipelineFromFlags(f);
  f.done();
  const vocab = Vocab.load(path);
  try {
    const text = chat ? vocab.applyChatTemplate([{ role: 'user', content: prompt }]) : prompt;
    const tokens = vocab.tokenize(text, true, true);
    let printed = Buffer.alloc(0);
    const res = generate(pipeline, vocab, tokens, {
      ...sampling,
      nPredict,
      onToken: json ? undefined : (t) => {
        // stream whole UTF-8 characters only
        printed = Buffer.concat([printed, vocab.tokenBytes(t)]);
        let end = printed.length;
        while (end > 0 && (printed[end - 1]! & 0xc0) === 0x80) end--;
        if (end > 0 && printed[end - 1]! >= 0xc0) end--;
        out.write(printed.subarray(0, end).toString('utf8'));
        printed = printed.subarray(end);
      },
    });
    if (json) {
      out.write(`${JSON.stringify({ tokens: res.tokens, text: vocab.detokenize(res.tokens) })}\n`);
    } else {
      out.write(`${printed.toString('utf8')}\n`);
      const tps = (n: number, ms: number) => (ms > 0 ? ((n * 1000) / ms).toFixed(1) : '-');
      process.stderr.write(`prompt ${tokens.length} tokens ${tps(tokens.length, res.promptMs)} tok/s, generated ${res.tokens.length} tokens ${tps(res.tokens.length - 1, res.genMs)} tok/s\n`);
      for (const stage of pipeline.stages) {
        const m = stage.memory();
        const mb = (r: Record<string, number>) => Object.entries(r).map(([k, v]) => `${(v / 2 ** 20).toFixed(1)} MiB ${k}`).join(' + ');
        process.stderr.write(`stage ${stage.range.l0}:${stage.range.l1}: weights ${mb(m.weights)}, KV ${mb(m.kv)}, compute ${mb(m.compute)}\n`);
      }
    }
    return 0;
  } finally {
    vocab.dispose();
    pipeline.dispose();
  }
}
