// Stages chained in one process, exactly as workers chain them over the network: the hidden
// states of one stage are the input of the next.
import { GgufFile } from '@strata/gguf';
import { KvStateError, decodeState } from '@strata/kv-cache';
import { readHParams, type HParams } from './hparams.ts';
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
    // One header read for every stage; the split is checked before any weight is loaded.
    const file = GgufFile.open(options.model);
    const stages: Stage[] = [];
    try {
      const hp = readHParams(file);
      const split = options.split ?? [{ l0: 0, l1: hp.nLayer }];
      checkSplit(split, hp.nLayer);
      for (const range of split) stages.push(Stage.load(file, hp, { ...options, range }));
      return new Pipeline(stages);
    } catch (err) {
      for (const s of stages) s.dispose();
      throw err;
    } finally {
      file.close();
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

  /** Drops a sequence's cells in [p0, p1) from every stage's cache. */
  seqRemove(seq: number, p0 = -1, p1 = -1): void {
    for (const s of this.stages) s.cache.seqRemove(seq, p0, p1);
  }

  /** Shares `src`'s cells with `dst` on every stage. */
  seqCopy(src: number, dst: number, p0 = -1, p1 = -1): void {
    for (const s of this.stages) s.cache.seqCopy(src, dst, p0, p1);
  }

  /** Keeps only `seq` on every stage. */
  seqKeep(seq: number): void {
    for (const s of this.stages) s.cache.seqKeep(seq);
  }

  /** Moves `seq`'s positions in [p0, p1) by `delta` on every stage. */
  seqAdd(seq: number, p0: number, p1: number, delta: number): void {
    for (const s of this.stages) s.cache.seqAdd(seq, p0, p1, delta);
  }

  /** Divides `seq`'s positions in [p0, p1) by `d` on every stage. */
  seqDivide(seq: number, p0: number, p1: number, d: number): void {
    for (const s of this.stages) s.cache.seqDivide(seq, p0, p1, d);
  }

  /** Defragments every stage's cache (results unchanged); returns the cells moved per stage. */
  defrag(): number[] {
    return this.stages.map((s) => s.cache.defrag());
  }

  /** Context shift of a full sequence on every stage; returns the positions dropped. */
  contextShift(seq: number, nKeep: number, nDiscard?: number): number {
    let n = 0;
    for (const s of this.stages) n = s.cache.contextShift(seq, nKeep, nDiscard);
    return n;
  }

  /** One state blob per stage for `seq` (layers of that stage), in stage order. */
  exportState(seq: number, p0 = -1, p1 = -1): Uint8Array[] {
    return this.stages.map((s) => s.cache.exportState(seq, { p0, p1 }));
  }

  /**
   * Imports blobs exported by any pipeline of the same model, however it was split, into `seq`:
   * every stage takes the parts that overlap its layers. Throws before changing anything when
   * the blobs do not cover every layer.
   */
  importState(blobs: Uint8Array[], seq: number): void {
    const states = blobs.map((b) => decodeState(b));
    for (const s of this.stages) {
      for (let l = s.range.l0; l < s.range.l1; l++) {
        if (!states.some(({ header: h }) => h.l0 <= l && l < h.l1)) throw new KvStateError('layer_mismatch', `no KV state holds layer ${l}`);
      }
    }
    const fresh = this.seqPosMax(seq) < 0;
    try {
      for (const s of this.stages) {
        for (const st of states) if (st.header.l0 < s.range.l1 && s.range.l0 < st.header.l1) s.cache.importState(st, seq);
      }
    } catch (err) {
      if (fresh) this.seqRemove(seq); // a half-imported sequence must not stay behind
      throw err;
    }
  }

  /**
   * Smallest position of `seq` that every stage still holds (a windowed stage may have dropped
   * older ones; llama.cpp's iSWA cache answers the same way), -1 when none.
   */
  seqPosMin(seq: number): number {
    return Math.max(...this.stages.map((s) => s.cache.seqPosMin(seq)));
  }

  /** Largest cached position of `seq` (every stage holds it), -1 when none. */
  seqPosMax(seq: number): number {
    return this.stages[0]!.cache.seqPosMax(seq);
  }

  /** Frees every stage. Idempotent. */
  dispose(): void {
    for (const s of this.stages) s.dispose();
  }
}
