// readHParams on metadata-only GGUFs: gemma3's window, its pattern, its two RoPE bases, its
// attention scale and soft-capping, read as libllama's llama_model_gemma3::load_arch_hparams does;
// the experts of llama and qwen3moe mixtures, and the ones refused.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { GgufFile, GgufValueType, kvF32, kvStr, kvU32, writeGguf, type GgufKv } from '@strata/gguf';
import { layerRope, readHParams, type HParams } from './hparams.ts';

/** readHParams of a metadata-only GGUF of these keys. */
function readKvs(kvs: GgufKv[]): HParams {
  const dir = mkdtempSync(join(tmpdir(), 'strata-hparams-'));
  try {
    const path = join(dir, 'm.gguf');
    writeGguf(path, kvs, [], () => new Uint8Array(0));
    const f = GgufFile.open(path);
    try {
      return readHParams(f);
    } finally {
      f.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function read(nLayer: number, extra: GgufKv[], nEmbd = 640, nHead = 4): HParams {
  return readKvs([
    kvStr('general.architecture', 'gemma3'), kvU32('gemma3.block_count', nLayer), kvU32('gemma3.embedding_length', nEmbd),
    kvU32('gemma3.feed_forward_length', 2048), kvU32('gemma3.attention.head_count', nHead), kvU32('gemma3.attention.head_count_kv', 1),
    kvU32('gemma3.attention.key_length', 256), kvU32('gemma3.context_length', 32768), kvU32('gemma3.vocab_size', 1000),
    kvF32('gemma3.attention.layer_norm_rms_epsilon', 1e-6), kvF32('gemma3.rope.freq_base', 1e6), ...extra,
  ]);
}

const full = (hp: HParams) => hp.swaLayers.flatMap((x, il) => (x ? [] : [il]));

test('gemma3: every sixth layer is global by default; the windowed ones use the local RoPE base', () => {
  const hp = read(18, [kvU32('gemma3.attention.sliding_window', 512), kvF32('gemma3.rope.freq_base_swa', 20000)]);
  assert.equal(hp.nSwa, 512);
  assert.deepEqual(full(hp), [5, 11, 17]);
  assert.deepEqual(layerRope(hp, 0), { freqBase: 20000, freqScale: 1 });
  assert.deepEqual(layerRope(hp, 5), { freqBase: 1e6, freqScale: 1 });
  assert.deepEqual([hp.embdScale, hp.attnScale, hp.qScaled, hp.logitSoftcap], [Math.sqrt(640), 1 / 16, true, 0]);
});

test('gemma3: a scalar pattern, an ignored array pattern, no window, the local base default, soft-capping, linear scaling on global layers only', () => {
  assert.deepEqual(full(read(8, [kvU32('gemma3.attention.sliding_window', 64), kvU32('gemma3.attention.sliding_window_pattern', 4)])), [3, 7]);
  const arr: GgufKv = { key: 'gemma3.attention.sliding_window_pattern', type: GgufValueType.ARRAY, arrayType: GgufValueType.BOOL, value: [true, false, true, false] };
  assert.deepEqual(full(read(4, [kvU32('gemma3.attention.sliding_window', 64), arr])), [], 'libllama ignores an array here: period 6');
  const none = read(4, []);
  assert.equal(none.nSwa, 0);
  assert.deepEqual(full(none), [0, 1, 2, 3]);
  assert.equal(layerRope(none, 0).freqBase, 1e6);
  const capped = read(8, [kvU32('gemma3.attention.sliding_window', 64), kvF32('gemma3.final_logit_softcapping', 30),
    kvStr('gemma3.rope.scaling.type', 'linear'), kvF32('gemma3.rope.scaling.factor', 8)]);
  assert.equal(capped.logitSoftcap, 30);
  assert.equal(layerRope(capped, 0).freqBase, 10000, 'the local base defaults to 10000');
  assert.deepEqual([layerRope(capped, 0).freqScale, layerRope(capped, 5).freqScale], [1, 1 / 8]);
});

test('gemma3 27B (62 layers) scales attention by 1/√(n_embd / n_head)', () => {
  const hp = read(62, [], 5376, 32);
  assert.equal(hp.attnScale, Math.fround(1 / Math.fround(Math.sqrt(168))));
});

/** readHParams of a metadata-only GGUF of `arch` (n_ff 768) with `extra` keys. */
function readArch(arch: string, extra: GgufKv[]): HParams {
  return readKvs([
    kvStr('general.architecture', arch), kvU32(`${arch}.block_count`, 4), kvU32(`${arch}.embedding_length`, 256),
    kvU32(`${arch}.feed_forward_length`, 768), kvU32(`${arch}.attention.head_count`, 4), kvU32(`${arch}.context_length`, 4096),
    kvU32(`${arch}.vocab_size`, 1000), kvF32(`${arch}.attention.layer_norm_rms_epsilon`, 1e-6), ...extra,
  ]);
}

test('experts as libllama reads them: llama (Mixtral) experts as wide as n_ff; qwen3moe its expert width, else n_ff / used', () => {
  const moe = (hp: HParams) => [hp.nExpert, hp.nExpertUsed, hp.nFfExp, hp.expertWeightsScale];
  assert.deepEqual(moe(readArch('llama', [])), [0, 0, 0, 0], 'dense');
  assert.deepEqual(moe(readArch('llama', [kvU32('llama.expert_count', 8), kvU32('llama.expert_used_count', 2)])), [8, 2, 768, 0]);
  assert.deepEqual(moe(readArch('qwen3moe', [kvU32('qwen3moe.expert_count', 128), kvU32('qwen3moe.expert_used_count', 8), kvU32('qwen3moe.expert_feed_forward_length', 96)])), [128, 8, 96, 0]);
  assert.deepEqual(moe(readArch('qwen3moe', [kvU32('qwen3moe.expert_count', 16), kvU32('qwen3moe.expert_used_count', 4), kvF32('qwen3moe.expert_weights_scale', 2.5)])), [16, 4, 192, 2.5]);
  const q2 = readArch('qwen2moe', [kvU32('qwen2moe.expert_count', 60), kvU32('qwen2moe.expert_used_count', 4), kvU32('qwen2moe.expert_feed_forward_length', 1408)]);
  assert.deepEqual([...moe(q2), q2.expertWeightsNorm, q2.nFfShexp], [60, 4, 1408, 0, false, 768], 'qwen2moe: weights as routed, a shared expert n_ff wide');
  assert.equal(readArch('qwen3moe', [kvU32('qwen3moe.expert_count', 8), kvU32('qwen3moe.expert_used_count', 2)]).expertWeightsNorm, true);
});

test('experts an architecture does not have, or a count that makes no mixture, are refused by name', () => {
  assert.throws(() => readArch('qwen2', [kvU32('qwen2.expert_count', 8), kvU32('qwen2.expert_used_count', 2)]), /qwen2 with experts is not supported \(mixtures of experts: llama, qwen2moe, qwen3moe, gpt-oss\)/);
  assert.throws(() => readArch('qwen3moe', []), /qwen3moe needs expert_count and 1 ≤ expert_used_count ≤ expert_count, got 0 and 0/);
  assert.throws(() => readArch('llama', [kvU32('llama.expert_count', 4), kvU32('llama.expert_used_count', 5)]), /got 4 and 5/);
});

test('RoPE scaling as libllama reads it: linear by default, yarn with its factors, none, and others refused by name', () => {
  const rope = (extra: GgufKv[]) => {
    const hp = readArch('qwen3', extra);
    return [hp.ropeFreqScale, hp.ropeExtFactor, hp.ropeAttnFactor, hp.nCtxOrig];
  };
  assert.deepEqual(rope([]), [1, 0, 1, 4096]);
  assert.deepEqual(rope([kvF32('qwen3.rope.scaling.factor', 4)]), [0.25, 0, 1, 4096], 'a factor without a type is linear');
  assert.deepEqual(rope([kvStr('qwen3.rope.scaling.type', 'none'), kvF32('qwen3.rope.scaling.factor', 4)]), [1, 0, 1, 4096]);
  const [scale, ext, attn, orig] = rope([kvStr('qwen3.rope.scaling.type', 'yarn'), kvF32('qwen3.rope.scaling.factor', 4), kvU32('qwen3.rope.scaling.original_context_length', 32768), kvF32('qwen3.rope.scaling.attn_factor', 1.5)]);
  assert.deepEqual([scale, ext, orig], [0.25, 1, 32768]);
  assert.ok(Math.abs(attn! - 1.5) < 1e-6, `YaRN's own factor cancels out: ${attn}`);
  assert.throws(() => rope([kvStr('qwen3.rope.scaling.type', 'longrope')]), /rope scaling 'longrope' is not supported \(linear, yarn, none\)/);
});

test('gpt-oss as libllama reads it: every other layer windowed, the window base, 1/√n_rot, softmax over the chosen experts', () => {
  const hp = readArch('gpt-oss', [
    kvU32('gpt-oss.expert_count', 32), kvU32('gpt-oss.expert_used_count', 4), kvU32('gpt-oss.expert_feed_forward_length', 2880),
    kvU32('gpt-oss.attention.sliding_window', 128), kvU32('gpt-oss.rope.dimension_count', 64), kvU32('gpt-oss.attention.key_length', 64),
    kvF32('gpt-oss.rope.freq_base', 150000),
  ]);
  assert.deepEqual([hp.nExpert, hp.nExpertUsed, hp.nFfExp, hp.expertWeightsNorm, hp.expertGating], [32, 4, 2880, false, 'softmax_weight']);
  assert.deepEqual([hp.nSwa, full(hp)], [128, [1, 3]], 'the even layers are windowed');
  assert.deepEqual(layerRope(hp, 0), { freqBase: 150000, freqScale: 1 }, 'the windowed layers take the global base unless the file names one');
  assert.equal(hp.attnScale, 0.125);
  assert.throws(() => readArch('gpt-oss', [kvU32('gpt-oss.expert_count', 4), kvU32('gpt-oss.expert_used_count', 2), kvU32('gpt-oss.attention.sliding_window', 128)]), /expert_feed_forward_length is missing/);
});
