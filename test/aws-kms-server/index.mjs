// The AWS KMS TEST DOUBLE for kmsbridge's tests (see README.md here): the
// server itself is compiled from src-ts/dev-kms/ and run as `kmsbridge
// dev-kms`; this module starts it for a test, hands out the environment
// a kmsbridge process needs to reach it, an AWS SDK client for checks made
// independently of kmsbridge, and a blackholed endpoint.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { KMSClient } from '@aws-sdk/client-kms';
import { CLI } from '../lib/env.mjs';

export { startDevKms, FAULT_KINDS } from '../../dist/dev-kms/server.js';

/** Fake credentials: they open nothing but the test double. */
export const TEST_CREDENTIALS = { accessKeyId: 'AKIDKMSBRIDGETEST000', secretAccessKey: 'kmsbridge-test-secret-0000000000000000000' };
export const TEST_REGION = 'eu-west-1';

/**
 * Environment for a kmsbridge process: the fake credentials and nothing from
 * the real machine (no ~/.aws files, no instance metadata lookups).
 */
export function awsEnv(credentials = TEST_CREDENTIALS) {
  return {
    AWS_ACCESS_KEY_ID: credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    AWS_REGION: TEST_REGION,
    AWS_CONFIG_FILE: '/dev/null',
    AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    AWS_PROFILE: '',
  };
}

/**
 * Starts `kmsbridge dev-kms` in a child process for one test (stopped at
 * teardown): tests run kmsbridge with spawnSync, which would stall a server
 * living in the test's own event loop. Returns its URL and region and the
 * control endpoint as methods: stats(), addFault(f), clearFaults(), reset().
 */
export async function startTestKms(t, { region = TEST_REGION, args = [] } = {}) {
  const child = spawn(process.execPath, [CLI, 'dev-kms', '--port', '0', '--region', region, '--credentials-from-env', '--quiet', ...args], {
    env: { ...withoutNodeOptions(process.env), ...awsEnv() },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`kmsbridge dev-kms exited with ${code}: ${log}`)));
  });
  const control = async (method, what, body) => {
    const r = await fetch(`${url}/_dev-kms/${what}`, { method, ...(body ? { body: JSON.stringify(body) } : {}) });
    const json = await r.json();
    if (!r.ok) throw new Error(`dev-kms control ${method} ${what}: ${json.error}`);
    return json;
  };
  return {
    url,
    region,
    port: Number(new URL(url).port),
    stats: () => control('GET', 'stats'),
    addFault: (f) => control('POST', 'faults', f),
    clearFaults: () => control('DELETE', 'faults'),
    reset: () => control('POST', 'reset'),
  };
}

/** An AWS SDK client of its own, for what a test checks without kmsbridge (GetPublicKey, CreateKey, DisableKey…). */
export function sdkClient(server) {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new KMSClient({ region: server.region, endpoint: server.url, credentials: TEST_CREDENTIALS, maxAttempts: 3 });
}

/** DER SubjectPublicKeyInfo as a PEM "PUBLIC KEY" block. */
export function spkiPem(der) {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return `-----BEGIN PUBLIC KEY-----\n${b64}\n-----END PUBLIC KEY-----\n`;
}

/**
 * An endpoint that never answers: a listening socket in a process whose
 * event loop is stopped for good, its small accept queue filled, so that new
 * connections hang as they do behind a firewall that drops packets.
 */
export async function blackhole(t) {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `const s = require('net').createServer();
       s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
         process.stdout.write(s.address().port + '\\n');
         setTimeout(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0), 100);
       });`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    child.kill('SIGKILL');
    await exited;
  });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    child.once('exit', (code) => reject(new Error(`blackhole helper exited with ${code}`)));
  });
  await new Promise((r) => setTimeout(r, 300));
  const fillers = Array.from({ length: 4 }, () => net.connect(port, '127.0.0.1').on('error', () => {}));
  t.teardown(() => fillers.forEach((s) => s.destroy()));
  return { url: `http://127.0.0.1:${port}`, port };
}

function withoutNodeOptions(env) {
  const out = { ...env };
  delete out.NODE_OPTIONS; // tap's loader hooks are for the test file, not for the programs it runs
  return out;
}
