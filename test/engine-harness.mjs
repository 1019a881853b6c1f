// Shared set-up for the ENGINE tests: a private agent (with an audit log) on
// a temporary local keyring, keys of every type with their exported public
// keys, and the three ways an application reaches the engine: `-engine
// /abs/path/kmsbridge.so`, `-engine kmsbridge` found through OPENSSL_ENGINES,
// and `-engine kmsbridge` configured by `kmsbridge conf --engine`. The system
// openssl, without the engine, is the independent verifier.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cliOk, sandbox, startAgent } from './lib/env.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const MODULES = path.join(ROOT, 'build', 'ossl-modules');
export const MODULE = path.join(MODULES, 'kmsbridge.so');
export const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

/** Why the engine tests cannot run here, or null. */
export function missing() {
  if (!fs.existsSync(MODULE)) return `${MODULE} is not built (make -C src-native)`;
  if (!fs.existsSync(CLI)) return `${CLI} is not built (npm run build:ts)`;
  if (spawnSync('openssl', ['version']).status !== 0) return 'no openssl CLI';
  const e = spawnSync('openssl', ['engine', '-t', MODULE], {
    encoding: 'utf8',
    env: { ...process.env, OPENSSL_CONF: '/dev/null' },
  });
  if (!/available/.test(e.stdout)) return `openssl cannot load ${MODULE} as an engine: ${e.stderr}`;
  return null;
}

export const KEYS = {
  web: 'ec-p256',
  ec384: 'ec-p384',
  rsa: 'rsa-2048',
  ed: 'ed25519',
};

/** Starts an agent on a fresh keyring and creates the keys above; the sandbox and agent end with |t|. */
export async function setup(t) {
  const box = sandbox(t);
  // The system openssl.cnf stays out of it: every test says what it loads.
  box.env.OPENSSL_CONF = '/dev/null';
  delete box.env.OPENSSL_ENGINES;
  delete box.env.KMSBRIDGE_DEBUG;
  const ctx = {
    box,
    env: box.env,
    dir: box.dir,
    sock: box.socket,
    file: box.file,
    audit: box.file('audit.log'),
    agent: null,
  };
  ctx.startAgent = async () => {
    ctx.agent = await startAgent(t, box);
  };
  ctx.stopAgent = async () => {
    if (!ctx.agent) return;
    const a = ctx.agent;
    ctx.agent = null;
    a.child.kill('SIGTERM');
    await a.exited;
  };
  await ctx.startAgent();
  for (const [name, type] of Object.entries(KEYS)) {
    cliOk(t, box, ['keys', 'create', name, '--keyring', 'local', '--type', type]);
    fs.writeFileSync(box.file(`${name}.pub.pem`), cliOk(t, box, ['keys', 'export', `kms:local/${name}`, '--format', 'pem']));
  }
  ctx.conf = box.file('engine.cnf');
  cliOk(t, box, ['conf', '--engine', '-o', ctx.conf]);
  return ctx;
}

/** The ways to reach the engine: openssl args to insert after the subcommand, and the environment. */
export function ways(ctx) {
  return {
    '-engine /abs/path/kmsbridge.so': {
      pre: ['-engine', MODULE],
      env: ctx.env,
    },
    '-engine kmsbridge with OPENSSL_ENGINES': {
      pre: ['-engine', 'kmsbridge'],
      env: { ...ctx.env, OPENSSL_ENGINES: MODULES },
    },
    '-engine kmsbridge from `kmsbridge conf --engine`': {
      pre: ['-engine', 'kmsbridge'],
      env: { ...ctx.env, OPENSSL_CONF: ctx.conf },
    },
  };
}

/** -engine by absolute path, the default way in single-way tests. */
export const ENGINE = ['-engine', MODULE];

export function openssl(ctx, args, opts = {}) {
  return spawnSync('openssl', args, {
    cwd: ctx.dir,
    env: opts.env ?? ctx.env,
    input: opts.input,
    encoding: opts.encoding ?? 'utf8',
    timeout: opts.timeout ?? 60000,
  });
}

/** The audit log's records (one JSON object per line). */
export function auditRecords(ctx) {
  if (!fs.existsSync(ctx.audit)) return [];
  return fs
    .readFileSync(ctx.audit, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}
