import assert from 'node:assert/strict';
import { create } from '@bufbuild/protobuf';
import { test } from 'node:test';
import { migrationJson, sessionJson } from './admin-json.ts';
import { MigrationInfoSchema, SessionInfoSchema } from './gen/strata/v1/coordinator_pb.ts';

test('ledger records and sessions in the admin API\'s JSON: numbers, not strings, and a parsed plan', () => {
  const m = migrationJson(create(MigrationInfoSchema, {
    id: 'm-1', sessionId: 's', fromPipeline: 'a', toPipeline: 'b', state: 'done', bytes: 1234n, createdMs: 1700000000000n,
    plan: '[{"source":"a0","target":"b0","l0":0,"l1":3}]', pauseMs: 12.5,
  }));
  assert.deepEqual({ bytes: m.bytes, created: m.created, error: m.error, plan: m.plan, pause_ms: m.pause_ms }, {
    bytes: 1234, created: 1700000000000, error: null, plan: [{ source: 'a0', target: 'b0', l0: 0, l1: 3 }], pause_ms: 12.5,
  });
  assert.deepEqual(migrationJson(create(MigrationInfoSchema, { plan: '{not json' })).plan, [], 'a damaged plan reads as none');
  assert.deepEqual(sessionJson(create(SessionInfoSchema, { id: 's', pipelineId: 'p', seq: 3, positions: 9, busy: true, lastUsedMs: 5n, epoch: 2n })), {
    id: 's', tenant: '', pipeline: 'p', seq: 3, positions: 9, busy: true, moving: false, last_used: 5, epoch: 2, saved: false,
  });
  assert.equal(sessionJson(create(SessionInfoSchema, { id: 'key-0123456789ab:s' })).tenant, 'key-0123456789ab', 'the tenant of a session key');
});
