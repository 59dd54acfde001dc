import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeTargets, drainRefusal, leastLoaded, placeMove, placeRebuild, placeRequest, type DrainTarget, type Placeable, type SplitHint } from './placement.ts';

const p = (id: string, load: number, o: Partial<Omit<Placeable, 'holds'>> & { sessions?: string[] } = {}): Placeable => ({
  id, load, modelId: o.modelId ?? 'm', fingerprint: o.fingerprint ?? 'fp', draining: o.draining ?? false, role: o.role ?? 'both', cachedPrefix: o.cachedPrefix, context: o.context,
  holds: (s) => (o.sessions ?? []).includes(s),
});
const to = (r: ReturnType<typeof placeRequest>) => ('to' in r ? r.to.id : r.refused.code);

test('a request goes to the least loaded pipeline of its model; ties go to the lowest id', () => {
  assert.equal(to(placeRequest([p('b', 2), p('a', 3), p('c', 1, { modelId: 'other' })], 'm', '')), 'b');
  assert.equal(to(placeRequest([p('c', 1), p('b', 1), p('d', 1)], 'm', '')), 'b', 'equal loads: the lowest id, whatever the order');
  assert.equal(leastLoaded([]), undefined);
});

test("a session's own pipeline wins over a less loaded one", () => {
  assert.equal(to(placeRequest([p('a', 0), p('b', 9, { sessions: ['t:s'] })], 'm', 't:s')), 'b');
  assert.equal(to(placeRequest([p('a', 5), p('b', 0, { sessions: ['t:x'] })], 'm', 't:s')), 'b', 'another session there does not matter');
});

test('a draining pipeline takes no request; its sessions are busy until they moved', () => {
  assert.equal(to(placeRequest([p('a', 0, { draining: true }), p('b', 7)], 'm', '')), 'b');
  const all = placeRequest([p('a', 0, { draining: true })], 'm', '');
  assert.ok('refused' in all && all.refused.code === 'no_pipeline' && /every pipeline of model 'm' is draining/.test(all.refused.message));
  const none = placeRequest([p('a', 0)], 'other', '');
  assert.ok('refused' in none && /no pipeline serves model 'other'/.test(none.refused.message));
  assert.equal(to(placeRequest([p('a', 0, { draining: true, sessions: ['t:s'] }), p('b', 3)], 'm', 't:s')), 'session_busy');
});

test('a request whose pipeline went down is rebuilt on the least loaded open pipeline of the same fingerprint', () => {
  const ps = [p('a', 0, { draining: true }), p('b', 4), p('c', 2, { fingerprint: 'other' }), p('d', 4)];
  assert.equal(placeRebuild(ps, 'fp')?.id, 'b', 'a drains, c runs another model, b and d tie: b');
  assert.equal(placeRebuild(ps, 'none'), undefined);
});

test('a session moves to the pipeline named, or to the least loaded other open one of its model', () => {
  const a = p('a', 0), b = p('b', 5), c = p('c', 2), d = p('d', 0, { draining: true }), e = p('e', 0, { fingerprint: 'other' });
  const ps = [a, b, c, d, e];
  const dst = (r: ReturnType<typeof placeMove>) => ('to' in r ? r.to.id : `${r.refused.code}: ${r.refused.message}`);
  assert.equal(dst(placeMove(ps, 't:s', a, '')), 'c', 'not itself, not draining, not another model');
  assert.equal(dst(placeMove(ps, 't:s', a, 'b')), 'b', 'named: even when more loaded');
  assert.equal(dst(placeMove(ps, 't:s', a, 'a')), 'bad_request: session t:s is already on a');
  assert.equal(dst(placeMove(ps, 't:s', a, 'd')), 'pipeline_draining: pipeline d is draining: it takes no session');
  assert.equal(dst(placeMove(ps, 't:s', a, 'z')), 'no_pipeline: no pipeline z');
  assert.equal(dst(placeMove([a, d], 't:s', a, '')), 'no_pipeline: no other pipeline of m takes work (1 other(s) draining)');
});

test('a session moves only where one sequence holds its positions (a pipeline of one KV stream per sequence holds fewer)', () => {
  const a = p('a', 0, { context: 4096 }), streams = p('s', 0, { context: 512 }), shared = p('h', 3, { context: 4096 });
  const dst = (r: ReturnType<typeof placeMove>) => ('to' in r ? r.to.id : `${r.refused.code}: ${r.refused.message}`);
  assert.equal(dst(placeMove([a, streams, shared], 't:s', a, '', 300)), 's', 'fits both: the least loaded');
  assert.equal(dst(placeMove([a, streams, shared], 't:s', a, '', 512)), 's', 'exactly one stream');
  assert.equal(dst(placeMove([a, streams, shared], 't:s', a, '', 513)), 'h', 'too long for a stream: the more loaded one where it fits');
  assert.equal(dst(placeMove([a, streams, shared], 't:s', a, 's', 2000)), 'bad_request: session t:s holds 2000 positions; a sequence of pipeline s holds at most 512');
  assert.equal(dst(placeMove([a, streams], 't:s', a, '', 2000)), 'no_pipeline: no other pipeline of m takes work where its 2000 positions fit (at most 512 a sequence)');
  assert.equal(dst(placeMove([a, p('x', 0)], 't:s', a, '', 100_000)), 'x', 'no context known: no limit');
});

test('a drain is refused when no other pipeline of the model would take work, unless the target drains already', () => {
  const t = (id: string, draining = false, fingerprint = 'fp'): DrainTarget => ({ id, modelId: 'm', fingerprint, draining });
  assert.equal(drainRefusal('w', t('a'), [t('a'), t('b')]), null, 'b takes work');
  assert.equal(drainRefusal('w', t('a', true), [t('a', true), t('b', true)]), null, 'draining it again changes nothing');
  const only = drainRefusal('w', t('a'), [t('a'), t('x', false, 'other')]);
  assert.match(only!, /draining worker w would leave model 'm' with no pipeline that takes work: it is the only pipeline of the model \(pipeline a\)/, 'a pipeline of another model does not count');
  assert.match(only!, /--force/);
  assert.match(drainRefusal('w', t('a'), [t('a'), t('b', true), t('c', true)])!, /the other 2 pipeline\(s\) of the model are draining/);
});

test('a request goes where its prompt is cached until that pipeline is busier than computing the prompt elsewhere costs', () => {
  const prompt = Array.from({ length: 1000 }, (_, i) => i);
  const cachedOn = (id: string, load: number, n: number): Placeable => ({ ...p(id, load), cachedPrefix: (scope) => (scope === 's' ? n : 0) });
  const hint = { scope: 's', prompt, cacheKey: '', loadTokens: 256 };
  assert.equal(to(placeRequest([p('a', 0), cachedOn('b', 2, 900)], 'm', '', hint)), 'b', '100 tokens to compute + 512 for its load beat 1000');
  assert.equal(to(placeRequest([p('a', 0), cachedOn('b', 4, 900)], 'm', '', hint)), 'a', 'four requests there: the prefix spreads');
  assert.equal(to(placeRequest([p('a', 0), cachedOn('b', 0, 900)], 'm', '', { ...hint, scope: 'other' })), 'a', 'another scope\'s cache counts for nothing');
  assert.equal(to(placeRequest([p('b', 1), p('a', 1)], 'm', '', hint)), 'a', 'nothing cached: the least loaded, ties to the lowest id');
});

test('without a cached prefix, one prompt_cache_key goes to one pipeline among the least loaded', () => {
  const prompt = [1, 2, 3];
  const all = [p('a', 0), p('b', 0), p('c', 1), p('d', 5)];
  const chosen = new Set(Array.from({ length: 5 }, () => to(placeRequest(all, 'm', '', { scope: 's', prompt, cacheKey: 'k1', loadTokens: 256 }))));
  assert.equal(chosen.size, 1, 'the same key, the same pipeline');
  assert.notEqual([...chosen][0], 'd', 'never a much busier one');
  const keys = new Set(Array.from({ length: 40 }, (_, i) => to(placeRequest(all, 'm', '', { scope: 's', prompt, cacheKey: `key-${i}`, loadTokens: 256 }))));
  assert.ok(keys.size >= 2, 'keys spread over the pipelines');
});

test('roles: a long prompt is prefilled on a prefill pipeline and handed off; the rest goes where it decodes', () => {
  const prompt = Array.from({ length: 600 }, (_, i) => i);
  const split = (o: Partial<SplitHint> = {}): SplitHint => ({ eligible: true, prompt, scope: 's', minPrompt: 512, maxPrefillLoad: 4, ...o });
  const pools = [p('d1', 3, { role: 'decode' }), p('p1', 1, { role: 'prefill' }), p('d0', 2, { role: 'decode' })];
  const placed = placeRequest(pools, 'm', '', undefined, split());
  assert.ok('to' in placed && placed.to.id === 'p1' && placed.handOff === true, 'prefilled on the prefill pipeline, handed off');
  const short = placeRequest(pools, 'm', '', undefined, split({ prompt: prompt.slice(0, 100) }));
  assert.ok('to' in short && short.to.id === 'd0' && !short.handOff, 'a short prompt goes to the least loaded decode pipeline, whole');
  assert.equal(to(placeRequest(pools, 'm', '', undefined, split({ eligible: false }))), 'd0', 'n > 1, embeddings and resumed requests are not handed off');
  assert.equal(to(placeRequest(pools, 'm', '', undefined, split({ maxPrefillLoad: 1 }))), 'd0', 'a prefill pipeline that is busy enough: prefilled where it decodes');
  const cachedHere = [p('p1', 0, { role: 'prefill' }), p('d0', 0, { role: 'decode', cachedPrefix: () => 200 })];
  assert.equal(to(placeRequest(cachedHere, 'm', '', undefined, split())), 'd0', 'what the decode pipeline holds counts: 400 new tokens there are below 512');
  const cachedThere = [p('p1', 0, { role: 'prefill', cachedPrefix: () => 590 }), p('p2', 0, { role: 'prefill' }), p('d0', 0, { role: 'decode' })];
  const hint = { scope: 's', prompt, cacheKey: '', loadTokens: 256 };
  assert.equal(to(placeRequest(cachedThere, 'm', '', hint, split())), 'p1', 'a prompt a prefill pipeline holds goes there: it costs only the hand-off');
  assert.equal(to(placeRequest(pools, 'm', '')), 'd0', 'without a split hint a prefill pipeline takes nothing');
  assert.equal(to(placeRequest([p('p1', 5, { role: 'prefill' }), p('p2', 0, { role: 'prefill' })], 'm', '', undefined, split())), 'p2', 'only prefill pipelines: they serve whole');
  assert.equal(to(placeRequest([p('p1', 0, { role: 'prefill', sessions: ['t:s'] }), p('d0', 0, { role: 'decode' })], 'm', 't:s', undefined, split())), 'p1', 'a session stays where its cells are');
  assert.deepEqual(decodeTargets([...pools, p('b', 0, { fingerprint: 'other' }), p('x', 0, { draining: true })], pools[1]!).map((q) => q.id), ['d0', 'd1'], 'hand-offs go to the decode pipelines of the model, least loaded first');
  assert.equal(placeRebuild(pools, 'fp')?.id, 'd0', 'a rebuild goes where it decodes');
  const moved = placeMove(pools, 't:s', pools[2]!, '');
  assert.ok('to' in moved && moved.to.id === 'd1', 'a session moves to a decode pipeline, not to a less loaded prefill one');
});
