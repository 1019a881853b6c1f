// Fork and thread safety of the provider, through a C program that uses it as
// any OpenSSL application does (test/native/provider_stress.c): keys loaded
// through OSSL_STORE, EVP_DigestSign, every signature verified by the program
// with the public half in the default provider, and a sample of them checked
// again here with the openssl CLI.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { MODULES, ROOT, missing, openssl, setup } from './provider-harness.mjs';

const STRESS = path.join(ROOT, 'build', 'native-tests', 'provider_stress');
const CHILDREN = 8;
const THREADS = 16;
const N = 50;

const why = missing() ?? (fs.existsSync(STRESS) ? null : `${STRESS} is not built (make -C src-native tests)`);
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;

  const run = (args) => {
    const r = spawnSync(STRESS, args, { env: ctx.env, encoding: 'utf8', timeout: 240000 });
    const fails = r.stdout.split('\n').filter((l) => l.startsWith('fail '));
    const summary = r.stdout.split('\n').find((l) => l.startsWith('summary ')) ?? '';
    return { r, fails, summary };
  };
  // openssl dgst -verify of the signature the program wrote as <outdir>/<sample>.sig
  const verified = (outdir, sample, pub) =>
    openssl(ctx, ['dgst', '-sha256', '-verify', pub, '-signature', path.join(outdir, `${sample}.sig`), path.join(outdir, `${sample}.msg`)]);

  for (const key of ['web', 'rsa']) {
    t.test(`${CHILDREN} forked children each sign ${N} times with the ${key} key their parent loaded and used`, async (t) => {
      const outdir = f(`fork-${key}`);
      fs.mkdirSync(outdir);
      const { r, fails, summary } = run(['fork', MODULES, outdir, `kms:local/${key}`, String(CHILDREN), String(N)]);
      t.equal(r.signal, null, `no crash or hang: ${r.stderr}`);
      t.equal(r.status, 0, fails.slice(0, 5).join('\n') || r.stdout.slice(-1000));
      t.match(summary, `children=${CHILDREN} per_child=${N} parent_failed=0 children_failed=0`);
      t.same(fails, [], 'no signature failed or failed to verify');
      for (const sample of ['parent-before', 'parent-after', ...Array.from({ length: CHILDREN }, (_, i) => `child-${i}`)]) {
        const v = verified(outdir, sample, f(`${key}.pub.pem`));
        t.equal(v.status, 0, `openssl verifies ${sample}: ${v.stdout}${v.stderr}`);
      }
    });
  }

  for (const [shared, own] of [
    ['web', 'rsa'],
    ['rsa', 'ec384'],
  ]) {
    t.test(`${THREADS} threads × ${N} signatures on the shared key kms:local/${shared} and a kms:local/${own} key of their own`, async (t) => {
      const outdir = f(`threads-${shared}`);
      fs.mkdirSync(outdir);
      const { r, fails, summary } = run(['threads', MODULES, outdir, `kms:local/${shared}`, `kms:local/${own}`, String(THREADS), String(N)]);
      t.equal(r.signal, null, `no crash or hang: ${r.stderr}`);
      t.equal(r.status, 0, fails.slice(0, 5).join('\n') || r.stdout.slice(-1000));
      t.match(summary, `threads=${THREADS} per_thread=${N} signed=${THREADS * N} failed=0`);
      for (let i = 0; i < THREADS; i++) {
        for (const [which, key] of [
          ['shared', shared],
          ['own', own],
        ]) {
          const v = verified(outdir, `thread-${i}-${which}`, f(`${key}.pub.pem`));
          t.equal(v.status, 0, `openssl verifies thread ${i} (${which}): ${v.stdout}${v.stderr}`);
        }
      }
    });
  }
}
