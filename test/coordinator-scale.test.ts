// The scale bench's rig at a small size, so it never rots: a real coordinator over real NATS and
// Redis drives simulated stages (test/bench/sim-stages.ts) in a process of their own; every
// session's turn completes with all its tokens, and the figures the bench prints are measured.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runScaleBench } from './bench/scale.ts';

describe('the coordinator at scale, small', () => {
  it('8 pipelines x 2 simulated stages: 64 sessions, then a sweep; nothing fails', async () => {
    const r = await runScaleBench({
      pipelines: 8, stages: 2, sessions: 64, sessionConcurrency: 32, sweep: [16], sweepSeconds: 2,
      stepBaseMs: 2, stepPerTokenMs: 0.01, promptTokens: 8, genTokens: 8,
    });
    assert.equal(r.sessionPhase.failed, 0);
    assert.equal(r.sessionPhase.tokens, 64 * 8, 'every session got all its tokens');
    assert.ok(r.sessionPhase.steps > 0 && r.sessionPhase.cpuMsPerStep > 0, JSON.stringify(r.sessionPhase));
    // a token's messages: the coordinator's step to stage 0, stage 0 to stage 1, the result, the event
    assert.ok(r.sessionPhase.natsMsgsPerToken > 1, `${r.sessionPhase.natsMsgsPerToken} NATS messages per token`);
    assert.ok(r.sweep[0]!.tokensPerS > 0 && Number.isFinite(r.sweep[0]!.tpotP50), JSON.stringify(r.sweep));
  });
});
