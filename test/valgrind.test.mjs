// valgrind memcheck of a representative openssl CLI session with kmsbridge
// loaded (the ordinary build, build/ossl-modules): ECDSA and RSA-PSS
// signatures, req -x509, OAEP decryption, one s_server handshake, and the
// error paths. No memcheck error and no definite or indirect leak is
// allowed; test/sanitizers/valgrind.supp lists what is suppressed and why.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './lib/env.mjs';
import { CLI, MODULES, keyRefPem, missing } from './provider-harness.mjs';
import { scenarios, session } from './sanitizers/scenarios.mjs';

const SUPP = path.join(ROOT, 'test', 'sanitizers', 'valgrind.supp');
const VALGRIND = [
  '-q',
  '--error-exitcode=99',
  '--leak-check=full',
  '--show-leak-kinds=definite,indirect',
  '--errors-for-leak-kinds=definite,indirect',
  '--keep-debuginfo=yes', // name kmsbridge.so's frames even after OpenSSL unloads it
  '--track-origins=yes',
  `--suppressions=${SUPP}`,
];

const why = missing() ?? (spawnSync('valgrind', ['--version']).status === 0 ? null : 'valgrind is not installed (scripts/system-deps.mjs --for test)');
if (why) {
  t.plan(0, why);
} else {
  const ctx = await session(t, { CLI, keyRefPem });
  ctx.modules = MODULES;
  const tool = {
    name: 'memcheck',
    flags: ['-provider-path', MODULES, '-provider', 'default', '-provider', 'kmsbridge'],
    env: {},
    command: (args) => ['valgrind', [...VALGRIND, 'openssl', ...args]],
    findings: (stderr) => stderr.split('\n').filter((l) => /^==\d+== /.test(l)),
  };
  const session_ = scenarios(tool).filter((s) => !/Ed25519|ECDH/.test(s.name));
  for (const s of session_) t.test(`memcheck: ${s.name}`, async (t) => s.run(t, ctx));
}
