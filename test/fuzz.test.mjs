// Fuzzes the C parsers that read untrusted bytes — the wire decoder (with
// re-encode and dump), the key-reference PEM/DER parser and URI validation —
// with libFuzzer + ASan + UBSan for a bounded time each, seeded from the
// golden vectors and the kept regression inputs (test/fuzz/). Any crash,
// sanitizer report, leak or timeout fails the test and leaves its input in
// build/fuzz/artifacts/. The long run is in docs/reliability.md.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './lib/env.mjs';

const SECONDS = Number(process.env.KMSBRIDGE_FUZZ_SECONDS ?? 20);

const build = spawnSync('make', ['-C', path.join(ROOT, 'src-native'), 'fuzz'], { encoding: 'utf8', timeout: 300_000 });
if (build.status !== 0) {
  t.fail(`make -C src-native fuzz failed (clang and libclang-rt-14-dev are in scripts/system-deps.mjs --for test):\n${build.stdout}${build.stderr}`);
} else {
  for (const target of ['wire', 'keyref', 'uri']) {
    t.test(`libFuzzer on the C ${target} parser for ${SECONDS} s finds no crash, leak or sanitizer report`, async (t) => {
      const r = spawnSync(process.execPath, [path.join(ROOT, 'test', 'fuzz', 'run.mjs'), '--seconds', String(SECONDS), target], {
        encoding: 'utf8',
        timeout: (SECONDS + 120) * 1000,
      });
      t.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      const line = r.stdout.trim().split('\n').pop() ?? '{}';
      const res = JSON.parse(line);
      t.equal(res.crash, null, 'no crash input');
      t.ok(res.execs > 1000, `${res.execs} executions, corpus of ${res.corpus} inputs`);
    });
  }
}
