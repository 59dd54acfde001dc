import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError } from '@strata/config';
import { gatewayConfig } from './config.ts';

const modelsOf = (argv: string[]) => gatewayConfig({ argv, env: {} }).models;
const refused = (re: RegExp) => (e: unknown) => e instanceof ConfigError && re.test(e.message);

test('--model takes one GGUF or several, each served under its file name or the matching --model-id', () => {
  assert.deepEqual(modelsOf(['--model', '/m/llama-3-8b.gguf']), [{ id: 'llama-3-8b', path: '/m/llama-3-8b.gguf' }]);
  assert.deepEqual(modelsOf(['--model', '/m/a.gguf, /m/b.gguf']), [{ id: 'a', path: '/m/a.gguf' }, { id: 'b', path: '/m/b.gguf' }]);
  assert.deepEqual(modelsOf(['--model', '/m/a.gguf,/m/b.gguf', '--model-id', 'small,big']), [{ id: 'small', path: '/m/a.gguf' }, { id: 'big', path: '/m/b.gguf' }]);
});

test('ids that do not match the models one for one, or twice the same, are refused', () => {
  assert.throws(() => modelsOf(['--model', '/m/a.gguf,/m/b.gguf', '--model-id', 'x']), refused(/1 id\(s\) for 2 model/));
  assert.throws(() => modelsOf(['--model', '/m/a.gguf,/n/a.gguf']), refused(/'a' is given twice/));
  assert.throws(() => modelsOf(['--model', '/m/a.gguf,']), refused(/empty file/));
  assert.throws(() => modelsOf(['--model', '/m/a.gguf,/m/b.gguf', '--model-id', 'x,']), refused(/id is empty/));
});
