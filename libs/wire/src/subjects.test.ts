import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WireError } from './errors.ts';
import { isGatewayBatch, subjects } from './subjects.ts';

test('subjects follow strata.v1.<role>.<verb>[.<id>] and refuse ids that would change them', () => {
  assert.equal(subjects.workerStep('w-1'), 'strata.v1.worker.step.w-1');
  assert.equal(subjects.coordinatorGenerate(), 'strata.v1.coordinator.generate');
  for (const bad of ['a.b', '*', '>', 'a b', '', 'x'.repeat(129)]) {
    assert.throws(() => subjects.gatewayEvents(bad), (e) => e instanceof WireError && e.code === 'bad_subject');
  }
});

test('a gateway\'s batch subject is one of the gateway events subjects, and only it passes isGatewayBatch', () => {
  assert.equal(subjects.gatewayBatch('g1'), 'strata.v1.gateway.events.batch-g1');
  assert.ok(isGatewayBatch(subjects.gatewayBatch('9f2c-aa')));
  for (const other of [subjects.gatewayEvents('r1'), 'strata.v1.gateway.events.batch-', 'strata.v1.gateway.events.batch-a.b', 'strata.v1.worker.step.batch-x', 'strata.v1.gateway.events.batch-*']) {
    assert.equal(isGatewayBatch(other), false, other);
  }
});
