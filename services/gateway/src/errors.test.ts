import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fromAdminError } from './errors.ts';

test('an admin refusal answers with the status a caller can act on', () => {
  const status = (code: string) => fromAdminError(code, 'm').status;
  assert.deepEqual(['not_found', 'no_pipeline'].map(status), [404, 404]);
  assert.deepEqual(['session_busy', 'pipeline_draining', 'last_pipeline'].map(status), [409, 409, 409], 'a conflict with the cluster as it is now');
  assert.deepEqual(['bad_request', 'model_mismatch', ''].map(status), [400, 400, 400]);
  const e = fromAdminError('unavailable', 'the drains could not be read');
  assert.deepEqual([e.status, e.retryAfter, e.body().error.code], [503, 1, 'unavailable'], 'Redis away: retry');
  assert.match(e.message, /retry later/);
});
