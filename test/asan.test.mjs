// AddressSanitizer + UBSan: the native tests and the threaded provider
// harness built with `make -C src-native asan` (build/asan/), and the openssl
// CLI session of test/sanitizers/scenarios.mjs run by the system openssl with
// libasan preloaded and the instrumented kmsbridge.so loaded. Leak detection
// is on; test/sanitizers/lsan.supp lists what is suppressed and why.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from './lib/env.mjs';
import { CLI, keyRefPem, missing } from './provider-harness.mjs';
import { scenarios, session } from './sanitizers/scenarios.mjs';

const ASAN_DIR = path.join(ROOT, 'build', 'asan');
const MODULES = path.join(ASAN_DIR, 'ossl-modules');
const SUPP = path.join(ROOT, 'test', 'sanitizers', 'lsan.supp');
const LIBASAN = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout?.trim();
const SAN_ENV = {
  ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=1:exitcode=86:detect_stack_use_after_return=1:strict_string_checks=1',
  LSAN_OPTIONS: `suppressions=${SUPP}:print_suppressions=0`,
  UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
};
const findings = (stderr) => stderr.split('\n').filter((l) => /ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer/.test(l));

const why = missing();
const build = why ? null : spawnSync('make', ['-C', path.join(ROOT, 'src-native'), 'asan'], { encoding: 'utf8', timeout: 600_000 });
if (why) {
  t.plan(0, why);
} else if (build.status !== 0) {
  t.fail(`make -C src-native asan failed:\n${build.stdout}${build.stderr}`);
} else if (!LIBASAN || !fs.existsSync(fs.realpathSync(LIBASAN))) {
  t.fail(`libasan not found (gcc -print-file-name=libasan.so gave ${LIBASAN})`);
} else {
  const native = path.join(ASAN_DIR, 'native-tests');
  t.test('the C wire codec passes the golden vectors under ASan+UBSan', async (t) => {
    const r = spawnSync(path.join(native, 'wire_vectors'), [path.join(ROOT, 'test', 'golden', 'wire-vectors.txt')], {
      env: { ...process.env, ...SAN_ENV },
      encoding: 'utf8',
    });
    t.equal(r.status, 0, r.stdout.slice(-2000) + r.stderr);
    t.same(findings(r.stderr), []);
    t.notMatch(r.stdout, /^not ok/m);
  });
  t.test('the C key-reference tests pass under ASan+UBSan', async (t) => {
    const r = spawnSync(path.join(native, 'keyref_test'), [], { env: { ...process.env, ...SAN_ENV }, encoding: 'utf8' });
    t.equal(r.status, 0, r.stdout.slice(-2000) + r.stderr);
    t.same(findings(r.stderr), []);
  });

  const ctx = await session(t, { CLI, keyRefPem });
  ctx.modules = MODULES;

  const stress = path.join(native, 'provider_stress');
  t.test(
    '8 threads × 100 signatures on shared and separate keys through the ASan provider: all verify, no finding',
    { skip: fs.existsSync(stress) ? false : 'provider_stress not built' },
    async (t) => {
      const out = ctx.file('stress');
      const r = spawnSync(stress, ['threads', MODULES, out, 'kms:local/web', 'kms:local/rsa', '8', '100'], {
        env: { ...ctx.env, ...SAN_ENV },
        encoding: 'utf8',
        timeout: 300_000,
      });
      t.equal(r.status, 0, r.stdout.slice(-2000) + r.stderr.slice(-4000));
      t.same(findings(r.stderr), []);
      t.match(r.stdout, /summary/);
    },
  );

  const tool = {
    name: 'ASan+UBSan',
    flags: ['-provider-path', MODULES, '-provider', 'default', '-provider', 'kmsbridge'],
    env: { LD_PRELOAD: fs.realpathSync(LIBASAN), ...SAN_ENV },
    command: (args) => ['openssl', args],
    findings,
  };
  for (const s of scenarios(tool)) t.test(`ASan+UBSan: ${s.name}`, async (t) => s.run(t, ctx));
}
