import assert from 'node:assert/strict';
import { test } from 'node:test';
import { drainRefusal, leastLoaded, placeMove, placeRebuild, placeRequest, type DrainTarget, type Placeable } from './placement.ts';

const p = (id: string, load: number, o: Partial<Omit<Placeable, 'holds'>> & { sessions?: string[] } = {}): Placeable => ({
  id, load, modelId: o.modelId ?? 'm', fingerprint: o.fingerprint ?? 'fp', draining: o.draining ?? false,
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
