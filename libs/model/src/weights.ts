// The weights of one stage: exactly the tensors of layers [l0, l1) (plus the embeddings on the
// first stage and the output head on the last), read from the GGUF into a backend buffer.
import type { GgufFile, GgufTensorInfo } from '@strata/gguf';
import {
  Backend, BufferSet, BufferUsage, FileMapping, GgmlContext, GgmlError, groupByBufferType, hostView, matMulWeightBufferType, setTensor, tensorInfo,
  type BufferTypePtr, type TensorPtr,
} from '@strata/ggml';
import { ModelError } from './errors.ts';
import { nEmbdKvGqa, type HParams } from './hparams.ts';
import type { LayerCosts, LayerRange } from './layer-range.ts';

/** One transformer block's tensors. */
export interface LayerWeights {
  /** pre-attention norm (llama, qwen2, gemma3) */
  attnNorm: TensorPtr | null;
  /** Q, K and V projections, or one fused projection (phi3: `wqkv`, the others null) */
  wq: TensorPtr | null;
  wk: TensorPtr | null;
  wv: TensorPtr | null;
  wqkv: TensorPtr | null;
  wo: TensorPtr;
  bq: TensorPtr | null;
  bk: TensorPtr | null;
  bv: TensorPtr | null;
  /** the output projection's bias, and one attention sink logit per head (gpt-oss) */
  bo: TensorPtr | null;
  attnSinks: TensorPtr | null;
  /** pre-FFN norm (llama, qwen2, gemma3) */
  ffnNorm: TensorPtr | null;
  /** per-head norms of Q and K, norms after attention and after the FFN (exaone4, gemma3) */
  qNorm: TensorPtr | null;
  kNorm: TensorPtr | null;
  attnPostNorm: TensorPtr | null;
  ffnPostNorm: TensorPtr | null;
  /** null where `ffnUp` holds the gate's rows too (phi3) */
  ffnGate: TensorPtr | null;
  /** the dense FFN's up and down projections (null in a mixture of experts) */
  ffnUp: TensorPtr | null;
  ffnDown: TensorPtr | null;
  /** a mixture of experts' router [n_embd, n_expert] and experts [.., .., n_expert] (null in a dense FFN; gate optional on llama) */
  ffnGateInp: TensorPtr | null;
  ffnGateExps: TensorPtr | null;
  ffnUpExps: TensorPtr | null;
  ffnDownExps: TensorPtr | null;
  /** the shared expert (qwen2moe): its sigmoid gate's weights [n_embd] and its SwiGLU FFN */
  ffnGateInpShexp: TensorPtr | null;
  ffnGateShexp: TensorPtr | null;
  ffnUpShexp: TensorPtr | null;
  ffnDownShexp: TensorPtr | null;
  /** biases of the router and of each expert's projections (gpt-oss) */
  ffnGateInpB: TensorPtr | null;
  ffnGateExpsB: TensorPtr | null;
  ffnUpExpsB: TensorPtr | null;
  ffnDownExpsB: TensorPtr | null;
}

/** Options for {@link StageWeights.load}. */
export interface WeightOptions {
  /** let the CPU repack mat-mul weights for its fastest kernels (default true, as llama.cpp) */
  repack?: boolean;
  /**
   * on a CPU backend, leave the weights that need no conversion in the file, mapped read-only
   * (default true, as llama.cpp's mmap): no copy, and only the stage's own pages are read
   */
  mmap?: boolean;
}

/** Tensors that feed a mat-mul as its first operand (the ones a repacking buffer can hold). */
function isMatMulWeight(name: string): boolean {
  return /(attn_(q|k|v|output)|ffn_(gate|up|down|gate_inp)(_shexp)?)\.weight$/.test(name) || name === 'output.weight';
}

/** Experts: they feed ggml_mul_mat_id. */
function isExperts(name: string): boolean {
  return /ffn_(gate|up|down)_exps\.weight$/.test(name);
}

/**
 * What a token costs each layer and the head in a decode step: the bytes of the weights it reads
 * (mat-mul weights, a mixture's router and its share of the experts: n_expert_used of n_expert).
 * A decode step reads every weight once per step, so on CPUs and GPUs alike its time follows these
 * bytes; the token embeddings cost a row each and count nothing. The head is `output.weight`, or
 * the embeddings where the head is tied to them.
 */
export function decodeCosts(file: GgufFile, hp: HParams): LayerCosts {
  const layers = new Array<number>(hp.nLayer).fill(0);
  for (const t of file.header.tensors) {
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (!m || Number(m[1]) >= hp.nLayer) continue;
    if (isMatMulWeight(t.name)) layers[Number(m[1])]! += t.size;
    else if (isExperts(t.name)) layers[Number(m[1])]! += (t.size * hp.nExpertUsed) / Math.max(1, hp.nExpert);
  }
  const head = file.tensor('output.weight') ?? file.tensor('token_embd.weight');
  return { layers, head: head?.size ?? 0 };
}

interface Want {
  name: string;
  ne: number[];
  optional?: boolean;
}

/** Tensor names and shapes a stage needs, in file-independent order. */
export function stageTensorList(hp: HParams, range: LayerRange): Want[] {
  const kv = nEmbdKvGqa(hp), q = hp.headDim * hp.nHead;
  const out: Want[] = [];
  if (range.l0 === 0) out.push({ name: 'token_embd.weight', ne: [hp.nEmbd, hp.nVocab] });
  // llama 3.1-style frequency factors: one tensor that every layer's RoPE uses
  out.push({ name: 'rope_freqs.weight', ne: [hp.nRot / 2], optional: true });
  // exaone4 normalizes after attention and the FFN; gemma3 before and after both; those two and
  // qwen3 normalize Q and K per head
  const post = hp.arch === 'exaone4' || hp.arch === 'gemma3' || hp.arch === 'gemma2';
  const pre = hp.arch !== 'exaone4' && hp.arch !== 'gpt-oss';
  const gptOss = hp.arch === 'gpt-oss';
  const qkNorm = hp.arch === 'exaone4' || hp.arch === 'gemma3' || hp.arch === 'qwen3' || hp.arch === 'qwen3moe';
  for (let l = range.l0; l < range.l1; l++) {
    const p = `blk.${l}.`;
    if (qkNorm) out.push({ name: `${p}attn_q_norm.weight`, ne: [hp.headDim] }, { name: `${p}attn_k_norm.weight`, ne: [hp.headDim] });
    if (post) out.push({ name: `${p}post_attention_norm.weight`, ne: [hp.nEmbd] }, { name: `${p}post_ffw_norm.weight`, ne: [hp.nEmbd] });
    if (pre) out.push({ name: `${p}attn_norm.weight`, ne: [hp.nEmbd] }, { name: `${p}ffn_norm.weight`, ne: [hp.nEmbd] });
    // gpt-oss: its post_attention_norm normalizes the FFN's input (after the residual)
    if (gptOss) {
      out.push({ name: `${p}attn_norm.weight`, ne: [hp.nEmbd] }, { name: `${p}post_attention_norm.weight`, ne: [hp.nEmbd] });
      out.push({ name: `${p}attn_sinks.weight`, ne: [hp.nHead] }, { name: `${p}attn_output.bias`, ne: [hp.nEmbd] });
    }
    if (hp.arch === 'phi3') {
      // one fused Q/K/V projection, and one up projection that holds the gate's rows too
      out.push(
        { name: `${p}attn_qkv.weight`, ne: [hp.nEmbd, q + 2 * kv] },
        { name: `${p}attn_output.weight`, ne: [q, hp.nEmbd] },
        { name: `${p}ffn_up.weight`, ne: [hp.nEmbd, 2 * hp.nFf] },
        { name: `${p}ffn_down.weight`, ne: [hp.nFf, hp.nEmbd] },
      );
      continue;
    }
    out.push(
      { name: `${p}attn_q.weight`, ne: [hp.nEmbd, q] },
      { name: `${p}attn_k.weight`, ne: [hp.nEmbd, kv] },
      { name: `${p}attn_v.weight`, ne: [hp.nEmbd, kv] },
      { name: `${p}attn_output.weight`, ne: [q, hp.nEmbd] },
      { name: `${p}attn_q.bias`, ne: [q], optional: true },
      { name: `${p}attn_k.bias`, ne: [kv], optional: true },
      { name: `${p}attn_v.bias`, ne: [kv], optional: true },
    );
    if (hp.nExpert > 0) {
      const [e, ff] = [hp.nExpert, hp.nFfExp];
      out.push(
        { name: `${p}ffn_gate_inp.weight`, ne: [hp.nEmbd, e] },
        // llama's experts may have no gate (libllama: not required); qwen3moe's must
        { name: `${p}ffn_gate_exps.weight`, ne: [hp.nEmbd, ff, e], optional: hp.arch === 'llama' },
        { name: `${p}ffn_up_exps.weight`, ne: [hp.nEmbd, ff, e] },
        { name: `${p}ffn_down_exps.weight`, ne: [ff, hp.nEmbd, e] },
      );
      if (gptOss) {
        out.push(
          { name: `${p}ffn_gate_inp.bias`, ne: [e] },
          { name: `${p}ffn_gate_exps.bias`, ne: [ff, e] },
          { name: `${p}ffn_up_exps.bias`, ne: [ff, e] },
          { name: `${p}ffn_down_exps.bias`, ne: [hp.nEmbd, e] },
        );
      }
      if (hp.nFfShexp > 0) {
        out.push(
          { name: `${p}ffn_gate_inp_shexp.weight`, ne: [hp.nEmbd] },
          { name: `${p}ffn_gate_shexp.weight`, ne: [hp.nEmbd, hp.nFfShexp] },
          { name: `${p}ffn_up_shexp.weight`, ne: [hp.nEmbd, hp.nFfShexp] },
          { name: `${p}ffn_down_shexp.weight`, ne: [hp.nFfShexp, hp.nEmbd] },
        );
      }
      continue;
    }
    out.push(
      { name: `${p}ffn_gate.weight`, ne: [hp.nEmbd, hp.nFf] },
      { name: `${p}ffn_up.weight`, ne: [hp.nEmbd, hp.nFf] },
      { name: `${p}ffn_down.weight`, ne: [hp.nFf, hp.nEmbd] },
    );
  }
  if (range.l1 === hp.nLayer) {
    out.push({ name: 'output_norm.weight', ne: [hp.nEmbd] });
    out.push({ name: 'output.weight', ne: [hp.nEmbd, hp.nVocab], optional: true });
  }
  return out;
}

/**
 * The tensors of `file` a stage of `range` loads, checked against the shapes the architecture
 * needs (ModelError missing_tensor / bad_tensor_shape): its layers', the embeddings on the first
 * stage, the head on the last (the embeddings again there when the head is tied to them).
 */
export function stageTensors(file: GgufFile, hp: HParams, range: LayerRange): GgufTensorInfo[] {
  const wants = stageTensorList(hp, range);
  const isLast = range.l1 === hp.nLayer;
  // Tied head: the last stage needs token_embd when the file has no output.weight.
  if (isLast && !file.tensor('output.weight') && range.l0 !== 0) wants.push({ name: 'token_embd.weight', ne: [hp.nEmbd, hp.nVocab] });
  const infos: GgufTensorInfo[] = [];
  for (const w of wants) {
    const info = file.tensor(w.name);
    if (!info) {
      if (w.optional) continue;
      throw new ModelError('missing_tensor', `${file.path}: tensor ${w.name} is missing`, { tensor: w.name });
    }
    if (!sameShape(info.ne, w.ne)) {
      throw new ModelError('bad_tensor_shape', `${file.path}: tensor ${w.name} has shape [${info.ne.join(', ')}], expected [${w.ne.join(', ')}]`, { tensor: w.name });
    }
    infos.push(info);
  }
  return infos;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if ((a[i] ?? 1) !== (b[i] ?? 1)) return false;
  return true;
}

/** The weights of one stage, in one backend buffer. dispose() is idempotent. */
export class StageWeights {
  readonly range: LayerRange;
  readonly tokEmbd: TensorPtr | null;
  readonly layers: LayerWeights[];
  readonly outputNorm: TensorPtr | null;
  readonly output: TensorPtr | null;
  /** RoPE frequency factors [n_rot/2], when the model has them */
  readonly ropeFreqs: TensorPtr | null;
  /** bytes of tensor data read from the file (or mapped from it) */
  readonly bytesRead: number;
  readonly #buffers: BufferSet;
  /** the file, mapped, when some weights live in it */
  readonly #mapping: FileMapping | null;

  private constructor(hp: HParams, range: LayerRange, buffers: BufferSet, mapping: FileMapping | null, byName: Map<string, TensorPtr>, bytesRead: number) {
    this.range = range;
    this.#buffers = buffers;
    this.#mapping = mapping;
    this.bytesRead = bytesRead;
    const get = (n: string) => byName.get(n) ?? null;
    const req = (n: string) => {
      const t = byName.get(n);
      if (!t) throw new ModelError('missing_tensor', `tensor ${n} is missing`, { tensor: n });
      return t;
    };
    this.tokEmbd = get('token_embd.weight');
    this.layers = [];
    // gpt-oss's post_attention_norm is its FFN norm
    const gptOss = hp.arch === 'gpt-oss';
    for (let l = range.l0; l < range.l1; l++) {
      const p = `blk.${l}.`;
      this.layers.push({
        attnNorm: get(`${p}attn_norm.weight`), wq: get(`${p}attn_q.weight`), wk: get(`${p}attn_k.weight`),
        wv: get(`${p}attn_v.weight`), wqkv: get(`${p}attn_qkv.weight`), wo: req(`${p}attn_output.weight`), bq: get(`${p}attn_q.bias`),
        bk: get(`${p}attn_k.bias`), bv: get(`${p}attn_v.bias`), bo: get(`${p}attn_output.bias`), attnSinks: get(`${p}attn_sinks.weight`),
        ffnNorm: gptOss ? get(`${p}post_attention_norm.weight`) : get(`${p}ffn_norm.weight`),
        qNorm: get(`${p}attn_q_norm.weight`), kNorm: get(`${p}attn_k_norm.weight`),
        attnPostNorm: gptOss ? null : get(`${p}post_attention_norm.weight`), ffnPostNorm: get(`${p}post_ffw_norm.weight`),
        ffnGate: get(`${p}ffn_gate.weight`), ffnUp: get(`${p}ffn_up.weight`), ffnDown: get(`${p}ffn_down.weight`),
        ffnGateInp: get(`${p}ffn_gate_inp.weight`), ffnGateExps: get(`${p}ffn_gate_exps.weight`),
        ffnUpExps: get(`${p}ffn_up_exps.weight`), ffnDownExps: get(`${p}ffn_down_exps.weight`),
        ffnGateInpShexp: get(`${p}ffn_gate_inp_shexp.weight`), ffnGateShexp: get(`${p}ffn_gate_shexp.weight`),
        ffnUpShexp: get(`${p}ffn_up_shexp.weight`), ffnDownShexp: get(`${p}ffn_down_shexp.weight`),
        ffnGateInpB: get(`${p}ffn_gate_inp.bias`), ffnGateExpsB: get(`${p}ffn_gate_exps.bias`),
        ffnUpExpsB: get(`${p}ffn_up_exps.bias`), ffnDownExpsB: get(`${p}ffn_down_exps.bias`),
      });
      const w = this.layers.at(-1)!;
      if (!(w.ffnUp && w.ffnDown) && !(w.ffnGateInp && w.ffnUpExps && w.ffnDownExps)) throw new ModelError('missing_tensor', `layer ${l} has neither a dense FFN nor experts`, { tensor: `${p}ffn_up.weight` });
    }
    this.outputNorm = get('output_norm.weight');
    this.ropeFreqs = get('rope_freqs.weight');
    // Tied embeddings: the head reuses token_embd when output.weight is absent.
    this.output = get('output.weight') ?? get('token_embd.weight');
  }

  /** Loads the stage's tensors from `file` into `backend`'s memory, reading only their bytes. */
  static load(file: GgufFile, hp: HParams, range: LayerRange, backend: Backend, options: WeightOptions = {}): StageWeights {
    if (range.l0 < 0 || range.l1 > hp.nLayer || range.l0 >= range.l1) {
      throw new ModelError('bad_split', `layer range ${range.l0}:${range.l1} is outside the model's 0:${hp.nLayer}`);
    }
    const infos = stageTensors(file, hp, range);
    // Decide each tensor's buffer type (repacking types for mat-mul weights where the CPU has
    // them), then allocate one context and buffer per type.
    const probe = GgmlContext.create({ maxTensors: infos.length + 1 });
    let groups: Map<BufferTypePtr, GgufTensorInfo[]>;
    try {
      groups = groupByBufferType(infos, (info) => {
        const experts = isExperts(info.name);
        if (!experts && !isMatMulWeight(info.name)) return backend.bufferType();
        return matMulWeightBufferType(backend, probe.tensor(info.type, info.ne, info.name), options.repack ?? true, experts ? hp.nExpertUsed : 0);
      });
    } finally {
      probe.dispose();
    }
    const buffers = new BufferSet();
    const byName = new Map<string, TensorPtr>();
    let bytesRead = 0;
    let mapping: FileMapping | null = null;
    try {
      // Plain CPU weights stay in the file, mapped (as llama.cpp maps them): the buffer spans
      // the stage's tensors from the first byte to the last, each placed at its file offset.
      const plain = groups.get(backend.bufferType());
      if (plain && backend.isCpu && (options.mmap ?? true)) {
        mapping = mapOrNull(file.path);
        if (mapping) {
          const m = mapping;
          const first = Math.min(...plain.map((i) => file.tensorFileOffset(i)));
          const last = Math.max(...plain.map((i) => file.tensorFileOffset(i) + i.size));
          const tensors = buffers.addMapped(backend.device, m.at(first), last - first, plain.length + 1,
            (ctx) => plain.map((info) => ctx.tensor(info.type, info.ne, info.name)), (i) => m.at(file.tensorFileOffset(plain[i]!)));
          plain.forEach((info, i) => byName.set(info.name, tensors[i]!));
          bytesRead += plain.reduce((n, info) => n + info.size, 0);
          m.prefetch(first, last);
          groups.delete(backend.bufferType());
        }
      }
      let staging: Uint8Array | null = null;
      for (const [buft, group] of groups) {
        const { made: local, buffer } = buffers.add(buft, group.length + 1,
          (ctx) => group.map((info) => ctx.tensor(info.type, info.ne, info.name)), BufferUsage.WEIGHTS);
        // Plain host memory is read into directly; other types (device memory, repacking
        // buffers) take the bytes through ggml_backend_tensor_set, which converts them.
        const direct = buffer.isHost && buft === backend.bufferType();
        group.forEach((info, i) => {
          const t = local[i]!;
          byName.set(info.name, t);
          if (direct) {
            file.readTensorBytes(info, hostView(tensorInfo(t).data, info.size));
          } else {
            if (!staging || staging.byteLength < info.size) staging = new Uint8Array(info.size);
            const view = staging.subarray(0, info.size);
            file.readTensorBytes(info, view);
            setTensor(t, view);
          }
          bytesRead += info.size;
        });
      }
      return new StageWeights(hp, range, buffers, mapping, byName, bytesRead);
    } catch (err) {
      buffers.dispose();
      mapping?.dispose();
      throw err;
    }
  }

  /** Bytes of device memory the weights occupy. */
  get bytes(): number {
    return this.#buffers.bytes;
  }

  /** Bytes per buffer type ('CPU', 'CPU_REPACK', 'CUDA0', ...). */
  memoryByBufferType(): Record<string, number> {
    return this.#buffers.memoryByBufferType();
  }

  /** Frees the weights. Idempotent. */
  dispose(): void {
    this.#buffers.dispose();
    // after the buffers over it
    this.#mapping?.dispose();
  }
}

/** The file mapped, or null where the system will not map it (the weights are read instead). */
function mapOrNull(path: string): FileMapping | null {
  try {
    return FileMapping.open(path);
  } catch (err) {
    if (err instanceof GgmlError) return null;
    throw err;
  }
}
