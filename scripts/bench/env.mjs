// The bench's world: a private directory with a config (a local keyring, the
// same store behind two slow keyrings, a SoftHSM2 keyring), an agent, keys of
// each type as PEM files, as kms: keys and on the token, certificates for
// each, and a record of every process started so that all of them (and only
// they) are stopped at the end.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
export const MODULES = path.join(ROOT, 'build', 'ossl-modules');
export const MODULE = path.join(MODULES, 'kmsbridge.so');
export const KBBENCH = path.join(ROOT, 'build', 'bench', 'kbbench');
export const SOFTHSM_LIB = '/usr/lib/softhsm/libsofthsm2.so';
export const LIBP11_ENGINE = ['/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so', '/usr/lib/x86_64-linux-gnu/engines-3/libpkcs11.so'].find((p) =>
  fs.existsSync(p),
);
const HSM_PIN = '246810';
const HSM_LABEL = 'kmsbridge-bench';
// Ed25519 keys live on a token of their own: libp11 0.4.12 cannot enumerate a
// token's private keys at all once an EC_EDWARDS key is on it ("Unable to
// enumerate private keys"), which would take the RSA and EC figures with it.
const HSM_ED_LABEL = 'kmsbridge-bench-ed';

/** Key types measured: name used in files and URIs, kmsbridge spec, openssl genpkey args. */
export const ALGS = {
  'RSA-2048': { name: 'rsa2048', spec: 'rsa-2048', genpkey: ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'] },
  'RSA-3072': { name: 'rsa3072', spec: 'rsa-3072', genpkey: ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:3072'] },
  'P-256': { name: 'p256', spec: 'ec-p256', genpkey: ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'] },
  'P-384': { name: 'p384', spec: 'ec-p384', genpkey: ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'] },
  Ed25519: { name: 'ed25519', spec: 'ed25519', genpkey: ['-algorithm', 'ED25519'] },
};

const children = new Set();

/** Starts a process we own; it is killed (by its pid) at cleanup if still running. */
export function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export async function stopAll() {
  const waits = [];
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      waits.push(new Promise((r) => c.once('exit', r)));
      c.kill('SIGTERM');
    }
  }
  const t = setTimeout(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }, 3000);
  await Promise.all(waits);
  clearTimeout(t);
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

export function canConnect(socket) {
  return new Promise((resolve) => {
    const s = net.connect(socket);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000, ...opts });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

function runAsync(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const c = track(spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

/** Builds what the bench needs that `npm install` does not: dist/ (if absent) and kbbench. */
export function build(progress) {
  if (!fs.existsSync(CLI) || !fs.existsSync(MODULE)) {
    progress('building kmsbridge (npm run build)');
    run('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  }
  progress('building kbbench (make -C src-native bench)');
  run('make', ['-s', '-C', path.join(ROOT, 'src-native'), 'provider', 'bench'], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/**
 * Creates the world for |algs| (names of ALGS). Returns the context every
 * measurement uses.
 */
export async function setup(algs, progress) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsbridge-bench-'));
  fs.chmodSync(dir, 0o700);
  const file = (n) => path.join(dir, n);
  const keys = file('keys');
  fs.mkdirSync(keys, { mode: 0o700 });
  fs.mkdirSync(file('run'), { mode: 0o700 });
  fs.mkdirSync(file('tokens'));
  const sock = file('run/agent.sock');

  // SoftHSM2: one token for both kmsbridge's pkcs11 keyring and libp11's engine.
  const softhsmConf = file('softhsm2.conf');
  fs.writeFileSync(softhsmConf, `directories.tokendir = ${file('tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const hsmEnv = { SOFTHSM2_CONF: softhsmConf };
  for (const label of [HSM_LABEL, HSM_ED_LABEL]) {
    run('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', '13579135', '--pin', HSM_PIN], { env: { ...process.env, ...hsmEnv } });
  }

  const config = file('config.toml');
  const local = (extra = '') => `type = "local"\npath = "${keys}"\n${extra}`;
  fs.writeFileSync(
    config,
    [
      '[agent]',
      `audit_log = "${file('audit.log')}"`,
      '',
      '[keyrings.local]',
      local(),
      '[keyrings.slow5]',
      local('inject_latency_ms = 5\n'),
      '[keyrings.slow20]',
      local('inject_latency_ms = 20\n'),
      '[keyrings.hsm]',
      'type = "pkcs11"',
      `library = "${SOFTHSM_LIB}"`,
      `token_label = "${HSM_LABEL}"`,
      'pin_env = "KMSBRIDGE_BENCH_HSM_PIN"',
      'max_sessions = 16',
      '',
      '[keyrings.hsmed]',
      'type = "pkcs11"',
      `library = "${SOFTHSM_LIB}"`,
      `token_label = "${HSM_ED_LABEL}"`,
      'pin_env = "KMSBRIDGE_BENCH_HSM_PIN"',
      'max_sessions = 16',
      '',
      '[keyrings.mem]',
      `path = "${file('keys-mem')}"`,
      '',
    ].join('\n'),
  );
  // OpenSSL config for the libp11 engine (the module path is not an openssl CLI flag).
  const p11conf = file('openssl-pkcs11.cnf');
  fs.writeFileSync(
    p11conf,
    [
      'openssl_conf = openssl_init',
      'nodejs_conf = openssl_init',
      '[openssl_init]',
      'engines = engine_section',
      '[engine_section]',
      'pkcs11 = pkcs11_section',
      '[pkcs11_section]',
      'engine_id = pkcs11',
      ...(LIBP11_ENGINE ? [`dynamic_path = ${LIBP11_ENGINE}`] : []),
      `MODULE_PATH = ${SOFTHSM_LIB}`,
      'init = 0',
      '',
    ].join('\n'),
  );

  const env = {
    ...process.env,
    ...hsmEnv,
    KMSBRIDGE_BENCH_HSM_PIN: HSM_PIN,
    KMSBRIDGE_CONFIG: config,
    KMSBRIDGE_AGENT_SOCK: sock,
    KMSBRIDGE_DEBUG: '',
    OPENSSL_CONF: '/dev/null',
    HOME: dir,
    XDG_CONFIG_HOME: file('xdg-config'),
    XDG_DATA_HOME: file('xdg-data'),
    XDG_RUNTIME_DIR: file('xdg-run'),
  };
  delete env.NODE_OPTIONS;
  delete env.KMSBRIDGE_LOCAL_PASSPHRASE;

  const ctx = { dir, file, sock, config, p11conf, env, agent: null, keys: {}, hsmLabel: HSM_LABEL, hsmPin: HSM_PIN };

  ctx.startAgent = async (extraEnv = {}) => {
    const agent = track(spawn(process.execPath, [CLI, 'agent', '--foreground'], { env: { ...env, ...extraEnv }, stdio: ['ignore', 'ignore', 'pipe'] }));
    let log = '';
    agent.stderr.on('data', (d) => (log = (log + d).slice(-4000)));
    for (let i = 0; i < 300; i++) {
      if (agent.exitCode !== null) throw new Error(`the agent exited: ${log}`);
      if (await canConnect(sock)) break;
      await sleep(50);
    }
    if (!(await canConnect(sock))) throw new Error(`the agent did not listen: ${log}`);
    ctx.agent = agent;
    return agent;
  };
  ctx.stopAgent = async () => {
    const a = ctx.agent;
    ctx.agent = null;
    if (!a || a.exitCode !== null) return;
    const done = new Promise((r) => a.once('exit', r));
    a.kill('SIGTERM');
    await done;
  };
  ctx.cleanup = async () => {
    await stopAll();
    fs.rmSync(dir, { recursive: true, force: true });
  };

  progress('starting the agent');
  await ctx.startAgent();

  progress(`making keys (${algs.join(', ')}): PEM files, kms:local/…, kms:hsm/… on SoftHSM2`);
  const flags = ['-provider-path', MODULES, '-provider', 'default', '-provider', 'kmsbridge'];
  await Promise.all(
    algs.map(async (alg) => {
      const a = ALGS[alg];
      const pem = file(`${a.name}.pem`);
      await runAsync('openssl', ['genpkey', ...a.genpkey, '-out', pem], { env });
      await runAsync('openssl', ['req', '-new', '-x509', '-key', pem, '-subj', '/CN=localhost', '-days', '30', '-out', file(`${a.name}.crt`)], { env });
      const localUri = (await runAsync(process.execPath, [CLI, 'keys', 'create', a.name, '--keyring', 'local', '--type', a.spec], { env })).trim();
      const token = a.spec === 'ed25519' ? HSM_ED_LABEL : HSM_LABEL;
      const hsmUri = (
        await runAsync(process.execPath, [CLI, 'keys', 'create', a.name, '--keyring', a.spec === 'ed25519' ? 'hsmed' : 'hsm', '--type', a.spec], { env })
      ).trim();
      for (const [uri, crt] of [
        [localUri, `kms-${a.name}.crt`],
        [hsmUri, `hsm-${a.name}.crt`],
      ]) {
        await runAsync('openssl', ['req', ...flags, '-new', '-x509', '-key', uri, '-subj', '/CN=localhost', '-days', '30', '-out', file(crt)], { env });
      }
      ctx.keys[alg] = {
        pem,
        cert: file(`${a.name}.crt`),
        local: localUri,
        localCert: file(`kms-${a.name}.crt`),
        hsm: hsmUri,
        hsmCert: file(`hsm-${a.name}.crt`),
        // libp11's RFC 7512 URI for the same token object (kmsbridge labels it with the key name)
        p11: `pkcs11:token=${token};object=${a.name};type=private;pin-value=${HSM_PIN}`,
        name: a.name,
      };
    }),
  );
  return ctx;
}

/** Which engine variants can run here, with the reason when one cannot. */
export function engineAvailability() {
  const nm = spawnSync('nm', ['-D', '--defined-only', MODULE], { encoding: 'utf8' });
  const kmsEngine = nm.status === 0 && /\bbind_engine\b/.test(nm.stdout) ? null : 'src-native/engine is not built into kmsbridge.so yet (no bind_engine)';
  const libp11 = LIBP11_ENGINE ? null : 'libp11 pkcs11 engine not installed (apt-get install libengine-pkcs11-openssl)';
  return { kmsEngine, libp11 };
}

/** CPU model, cores, versions: printed and written beside the results. */
export function machine() {
  const cpu = os.cpus();
  const ossl = spawnSync('openssl', ['version'], { encoding: 'utf8' }).stdout.trim();
  const softhsm = spawnSync('softhsm2-util', ['--version'], { encoding: 'utf8' }).stdout.trim();
  const libp11 = spawnSync('dpkg-query', ['-W', '-f', '${Version}', 'libengine-pkcs11-openssl'], { encoding: 'utf8' }).stdout.trim();
  const rev = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
  let osName = os.type();
  try {
    osName = /PRETTY_NAME="([^"]+)"/.exec(fs.readFileSync('/etc/os-release', 'utf8'))?.[1] ?? osName;
  } catch {
    // keep os.type()
  }
  return {
    cpu: cpu[0]?.model ?? 'unknown',
    cores: cpu.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${osName}, Linux ${os.release()}`,
    openssl: ossl,
    node: process.version,
    nodeOpenssl: process.versions.openssl,
    softhsm: softhsm || 'unknown',
    libp11: libp11 || 'not installed',
    commit: rev,
    loadavg: os.loadavg().map((x) => Number(x.toFixed(2))),
  };
}
