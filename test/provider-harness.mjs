// Shared set-up for the provider tests: a private agent on a temporary local
// keyring, keys of every type, their exported public keys, and helpers that
// run the system openssl with kmsbridge loaded three ways (flags, OPENSSL_CONF,
// key-reference PEM). The system openssl is the independent peer.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const MODULES = path.join(ROOT, 'build', 'ossl-modules');
export const MODULE = path.join(MODULES, 'kmsbridge.so');
export const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

/** Why the provider tests cannot run here, or null. */
export function missing() {
  if (!fs.existsSync(MODULE)) return `${MODULE} is not built (make -C src-native)`;
  if (!fs.existsSync(CLI)) return `${CLI} is not built (npm run build:ts)`;
  if (spawnSync('openssl', ['version']).status !== 0) return 'no openssl CLI';
  return null;
}

// The default provider goes first: OpenSSL 3.0 hands a generic fetch ("EC"
// keymgmt for a fresh key, libssl's group list) to the provider loaded first.
export const FLAGS = ['-provider-path', MODULES, '-provider', 'default', '-provider', 'kmsbridge'];

export const KEYS = {
  web: 'ec-p256',
  ec384: 'ec-p384',
  ec521: 'ec-p521',
  rsa: 'rsa-2048',
  ed: 'ed25519',
};

/**
 * Starts an agent on a fresh local keyring and creates the keys above.
 * Registers its own teardown with |t|.
 */
export async function setup(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kbprov-'));
  fs.chmodSync(dir, 0o700);
  const keys = path.join(dir, 'keys');
  const run = path.join(dir, 'run');
  fs.mkdirSync(keys, { mode: 0o700 });
  fs.mkdirSync(run, { mode: 0o700 });
  const config = path.join(dir, 'config.toml');
  fs.writeFileSync(config, `[keyrings.local]\ntype = "local"\npath = "${keys}"\n`);
  const sock = path.join(run, 'agent.sock');
  const env = {
    ...process.env,
    KMSBRIDGE_AGENT_SOCK: sock,
    KMSBRIDGE_CONFIG: config,
    KMSBRIDGE_DEBUG: '',
    OPENSSL_CONF: '/dev/null',
  };
  const conf = path.join(dir, 'openssl.cnf');
  fs.writeFileSync(
    conf,
    [
      'openssl_conf = openssl_init',
      '[openssl_init]',
      'providers = provider_sect',
      '[provider_sect]',
      'default = default_sect',
      'kmsbridge = kmsbridge_sect',
      '[default_sect]',
      'activate = 1',
      '[kmsbridge_sect]',
      `module = ${MODULE}`,
      `agent_socket = ${sock}`,
      'activate = 1',
      '',
    ].join('\n'),
  );

  const ctx = { dir, sock, env, conf, agent: null, file: (name) => path.join(dir, name) };
  ctx.startAgent = async () => {
    ctx.agent = spawn(process.execPath, [CLI, 'agent', '--foreground'], { env, stdio: 'ignore' });
    // up to 60 s: a loaded 2-core machine can take well over 10 s to start an agent
    for (let i = 0; i < 600 && !fs.existsSync(sock); i++) await sleep(100);
    if (!fs.existsSync(sock)) throw new Error('the agent did not start');
  };
  ctx.stopAgent = async () => {
    if (!ctx.agent) return;
    const a = ctx.agent;
    ctx.agent = null;
    const done = new Promise((r) => a.once('exit', r));
    a.kill('SIGTERM');
    await done;
  };
  t.teardown(async () => {
    await ctx.stopAgent();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await ctx.startAgent();

  ctx.kb = (...args) => spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8' });
  for (const [name, type] of Object.entries(KEYS)) {
    const r = ctx.kb('keys', 'create', name, '--keyring', 'local', '--type', type);
    if (r.status !== 0) throw new Error(`keys create ${name}: ${r.stderr}`);
    const pub = ctx.kb('keys', 'export', `kms:local/${name}`, '--format', 'pem');
    if (pub.status !== 0) throw new Error(`keys export ${name}: ${pub.stderr}`);
    fs.writeFileSync(ctx.file(`${name}.pub.pem`), pub.stdout);
    fs.writeFileSync(ctx.file(`${name}.ref.pem`), keyRefPem(`kms:local/${name}`));
  }
  return ctx;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** The key-reference PEM of docs/wire-format.md (written here, independently of the CLI). */
export function keyRefPem(uri) {
  const u = Buffer.from(uri, 'utf8');
  const len = (n) => (n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]));
  const inner = Buffer.concat([Buffer.from([0x02, 0x01, 0x00, 0x0c]), len(u.length), u]);
  const der = Buffer.concat([Buffer.from([0x30]), len(inner.length), inner]);
  const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `kmsbridge key reference: ${uri}\nThe private key stays in the key manager; this file only names it.\n-----BEGIN KMSBRIDGE KEY URI-----\n${b64}-----END KMSBRIDGE KEY URI-----\n`;
}

/** The ways an application reaches a kms key: openssl args to prepend, environment, key argument. */
export function ways(ctx) {
  return {
    flags: (name) => ({ pre: FLAGS, env: ctx.env, key: `kms:local/${name}` }),
    OPENSSL_CONF: (name) => ({ pre: [], env: { ...ctx.env, OPENSSL_CONF: ctx.conf }, key: `kms:local/${name}` }),
    'key-reference PEM': (name) => ({ pre: FLAGS, env: ctx.env, key: ctx.file(`${name}.ref.pem`) }),
  };
}

export function openssl(ctx, args, opts = {}) {
  return spawnSync('openssl', args, {
    cwd: ctx.dir,
    env: opts.env ?? ctx.env,
    input: opts.input,
    encoding: opts.encoding ?? 'utf8',
    timeout: opts.timeout ?? 60000,
  });
}
