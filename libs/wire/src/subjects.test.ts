import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WireError } from './errors.ts';
import { subjects } from './subjects.ts';

test('subjects follow strata.v1.<role>.<verb>[.<id>] and refuse ids that would change them', () => {
  assert.equal(subjects.workerStep('w-1'), 'strata.v1.worker.step.w-1');
  assert.equal(subjects.coordinatorGenerate(), 'strata.v1.coordinator.generate');
  for (const bad of ['a.b', '*', '>', 'a b', '', 'x'.repeat(129)]) {
    assert.throws(() => subjects.gatewayEvents(bad), (e) => e instanceof WireError && e.code === 'bad_subject');
  }
});
