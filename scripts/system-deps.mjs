#!/usr/bin/env node
// Installs the Debian packages kmsbridge needs for a purpose, when it can
// (root with apt-get), or stops with the exact command to run. Never skips
// silently: a missing package here would otherwise surface as a confusing
// build or test failure much later.
//
//   node scripts/system-deps.mjs --for build   # native build: compiler, make, OpenSSL headers
//   node scripts/system-deps.mjs --for test    # test peers: openssl, ssh-keygen, curl, nginx, SoftHSM2 and pkcs11-tool
//   node scripts/system-deps.mjs --for bench --optional  # the test peers and libp11's pkcs11 ENGINE; not root: a warning
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';

// The real peers the tests and the benchmarks run against.
const PEERS = [
  { pkg: 'openssl', check: () => hasCommand('openssl') },
  { pkg: 'openssh-client', check: () => hasCommand('ssh-keygen') },
  { pkg: 'curl', check: () => hasCommand('curl') },
  { pkg: 'nginx-light', check: () => hasCommand('nginx') || fs.existsSync('/usr/sbin/nginx') },
  { pkg: 'softhsm2', check: () => hasCommand('softhsm2-util') && fs.existsSync('/usr/lib/softhsm/libsofthsm2.so') },
  { pkg: 'opensc', check: () => hasCommand('pkcs11-tool') },
];

const NEEDS = {
  build: [
    { pkg: 'make', check: () => hasCommand('make') },
    { pkg: 'gcc', check: () => hasCommand('cc') },
    { pkg: 'pkg-config', check: () => hasCommand('pkg-config') },
    { pkg: 'libssl-dev', check: () => fs.existsSync('/usr/include/openssl/core_dispatch.h') },
    // PKCS#11's types, for the agent's threads that sign on a token (src-native/node/pkcs11_sign.c)
    { pkg: 'libp11-kit-dev', check: () => fs.existsSync('/usr/include/p11-kit-1/p11-kit/pkcs11.h') },
    { pkg: 'openssl', check: () => hasCommand('openssl') },
  ],
  test: [
    ...PEERS,
    // reliability suite (docs/reliability.md): libFuzzer and sanitizers, memcheck, HTTP load
    { pkg: 'clang', check: () => hasCommand('clang') },
    { pkg: 'libclang-rt-14-dev', check: () => hasFuzzerRuntime() },
    { pkg: 'valgrind', check: () => hasCommand('valgrind') },
    { pkg: 'wrk', check: () => hasCommand('wrk') },
  ],
  // npm run bench: libp11's pkcs11 ENGINE is the outside PKCS#11 peer
  bench: [
    ...PEERS,
    {
      pkg: 'libengine-pkcs11-openssl',
      check: () => ['pkcs11.so', 'libpkcs11.so'].some((f) => fs.existsSync(`/usr/lib/x86_64-linux-gnu/engines-3/${f}`)),
    },
  ],
};

// libFuzzer's runtime, in clang's resource directory (its version in the path)
function hasFuzzerRuntime() {
  const base = '/usr/lib/llvm-14/lib/clang';
  if (!fs.existsSync(base)) return false;
  return fs.readdirSync(base).some((v) => fs.existsSync(`${base}/${v}/lib/linux/libclang_rt.fuzzer-x86_64.a`));
}

function hasCommand(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

const purpose = process.argv[process.argv.indexOf('--for') + 1];
if (!NEEDS[purpose]) {
  console.error(`usage: system-deps.mjs --for ${Object.keys(NEEDS).join('|')}`);
  process.exit(2);
}
// A consumer installing a prebuilt package needs no build tools; KMSBRIDGE_SKIP_SYSTEM_DEPS=1 is the explicit opt-out.
if (process.env.KMSBRIDGE_SKIP_SYSTEM_DEPS === '1') process.exit(0);

const missing = [...new Set(NEEDS[purpose].filter((n) => !n.check()).map((n) => n.pkg))];
if (missing.length === 0) process.exit(0);

const command = `apt-get update && apt-get install -y --no-install-recommends ${missing.join(' ')}`;
const isRoot = process.getuid?.() === 0;
if (!isRoot || !hasCommand('apt-get')) {
  console.error(`kmsbridge: the ${purpose} needs these Debian packages: ${missing.join(', ')}`);
  console.error(`install them, then run the command again:\n  sudo ${command}`);
  // --optional (npm run bench): go on without them; what needs them says so and is skipped
  process.exit(process.argv.includes('--optional') ? 0 : 1);
}
console.error(`kmsbridge: installing ${missing.join(', ')} for the ${purpose} (running as root)`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
for (const args of [
  ['update', '-q'],
  ['install', '-y', '-q', '--no-install-recommends', ...missing],
]) {
  const r = spawnSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env, timeout: 15 * 60_000 });
  if (r.status !== 0) {
    console.error(`kmsbridge: 'apt-get ${args.join(' ')}' failed (exit ${r.status ?? r.signal}); run it by hand:\n  ${command}`);
    process.exit(1);
  }
}
const still = NEEDS[purpose].filter((n) => !n.check()).map((n) => n.pkg);
if (still.length) {
  console.error(`kmsbridge: still missing after install: ${still.join(', ')}`);
  process.exit(1);
}
