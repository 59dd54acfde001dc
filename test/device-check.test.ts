// The device check's dry run on this machine's CPU (issue 20): the folder a GPU machine gets is
// packed (under the 64 MiB a device run carries), unpacked into a scratch folder as the GPU machine
// would, ggml, libllama and llama-bench are built there from the packed sources, and every check
// runs (parity with libllama, the engine bench against libllama and llama-bench, a cluster of two
// workers, a migration into a q8_0 CPU pipeline) with `--cpu --quick`, so the script never rots.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

const ROOT = join(import.meta.dirname, '..');

describe('the device check, dry run on the CPU', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'strata-device-check-'));
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it('packs under 64 MiB, builds from the packed sources and passes every check', { timeout: 1_800_000 }, () => {
    const pack = join(scratch, 'pack');
    const packed = spawnSync(process.execPath, [join(ROOT, 'scripts', 'device-check.mjs'), 'pack', pack], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(packed.status, 0, packed.stderr);
    const files = readdirSync(pack).sort();
    assert.deepEqual(files, ['llama-src.tar.xz', 'node.xz', 'run.sh', 'servers.tar.xz', 'strata.tar.xz']);
    const total = files.reduce((n, f) => n + statSync(join(pack, f)).size, 0);
    assert.ok(total <= 64 * 2 ** 20, `${(total / 2 ** 20).toFixed(1)} MiB`);
    const out = join(scratch, 'out');
    // As on the GPU machine: nothing but the folder (its own Node, servers, sources and cache).
    const run = spawnSync(join(pack, 'run.sh'), [out, '--cpu', '--quick'], { encoding: 'utf8', env: { ...process.env, STRATA_DEVICE_WORK: join(scratch, 'work') }, maxBuffer: 1 << 28 });
    const report = JSON.parse(readFileSync(join(out, 'device-check.json'), 'utf8')) as { device: string; build: { kind: string; dir: string }; rows: { check: string; ok: boolean; result: string }[] };
    assert.equal(run.status, 0, report.rows.filter((r) => !r.ok).map((r) => `${r.check}: ${r.result}`).join('\n') || run.stderr.slice(-2000));
    assert.equal(report.device, 'CPU');
    assert.equal(report.build.kind, 'native');
    assert.ok(report.build.dir.startsWith(join(scratch, 'work')), `built in the scratch folder, from the packed sources: ${report.build.dir}`);
    assert.deepEqual(report.rows.map((r) => r.check), [
      'parity 0:8', 'parity 0:3,3:8', 'engine llama 134M f16 pp128', 'engine llama 134M f16 tg32', 'cluster of 2 workers', 'migration device → CPU (q8_0)',
    ]);
    for (const r of report.rows) assert.ok(r.ok, `${r.check}: ${r.result}`);
    assert.match(report.rows.find((r) => r.check.startsWith('engine') && r.check.endsWith('pp128'))!.result, /× libllama .* × llama-bench/);
  });
});
