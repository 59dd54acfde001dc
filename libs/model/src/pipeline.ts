// Stages chained in one process, exactly as workers chain them over the network: the hidden
// states of one stage are the input of the next.
import { ModelError } from './errors.ts';
import type { HParams } from './hparams.ts';
import { checkSplit, type LayerRange } from './layer-range.ts';
import { Stage, type StageOptions } from './stage.ts';

/** Options for {@link Pipeline.open}. */
export interface PipelineOptions extends Omit<StageOptions, 'range'> {
  /** layer ranges, in order, covering the model; default: one stage with every layer */
  split?: LayerRange[];
}

/** A batch through the whole pipeline. */
export interface PipelineBatch {
  tokens: Int32Array;
  pos: Int32Array;
  seq: Int32Array;
  /** token indices whose logits are returned; default: all */
  outputs?: Int32Array;
}

/** An ordered chain of stages covering every layer. dispose() is idempotent. */
export class Pipeline {
  readonly stages: Stage[];
  readonly hp: HParams;

  private constructor(stages: Stage[]) {
    this.stages = stages;
    this.hp = stages[0]!.hp;
  }

  /** Opens every stage of the split. */
  static open(options: PipelineOptions): Pipeline {
    const first = Stage.open({ ...options, range: options.split?.[0] });
    const stages = [first];
    try {
      if (options.split) {
        checkSplit(options.split, first.hp.nLayer);
        for (const range of options.split.slice(1)) stages.push(Stage.open({ ...options, range }));
      } else if (!first.isLast) {
        throw new ModelError('bad_split', 'a pipeline without a split must hold every layer');
      }
      return new Pipeline(stages);
    } catch (err) {
      for (const s of stages) s.dispose();
      throw err;
    }
  }

  /** Runs a batch through every stage; returns logits [n_outputs * n_vocab]. */
  forward(batch: PipelineBatch): Float32Array {
    let hidden: Float32Array | undefined;
    let out: Float32Array = new Float32Array(0);
    for (const stage of this.stages) {
      out = stage.eval({
        tokens: stage.isFirst ? batch.tokens : undefined,
        hidden: stage.isFirst ? undefined : hidden,
        pos: batch.pos,
        seq: batch.seq,
        outputs: batch.outputs,
      });
      hidden = out;
    }
    return out;
  }

  /** Drops a sequence from every stage's cache. */
  seqRemove(seq: number, p0 = -1, p1 = -1): void {
    for (const s of this.stages) s.seqRemove(seq, p0, p1);
  }

  /** Frees every stage. Idempotent. */
  dispose(): void {
    for (const s of this.stages) s.dispose();
  }
}
