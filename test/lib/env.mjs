// Shared test fixtures: an isolated home (config, store, socket) per test, the
// CLI run as a user would run it, an agent as a real child process, and the
// system openssl as the independent verifier.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

/** A private scratch directory with its own config, store and socket; removed when the test ends. */
export function sandbox(t, { keyrings = { local: { type: 'local' } }, agent = {} } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsbridge-test-'));
  fs.chmodSync(dir, 0o700);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'run', 'agent.sock');
  const config = path.join(dir, 'config.toml');
  const lines = ['[agent]', `audit_log = "${path.join(dir, 'audit.log')}"`];
  for (const [k, v] of Object.entries(agent)) lines.push(`${k} = ${JSON.stringify(v)}`);
  for (const [name, kr] of Object.entries(keyrings)) {
    lines.push('', `[keyrings.${name}]`);
    const settings = { path: path.join(dir, `keys-${name}`), ...kr };
    for (const [k, v] of Object.entries(settings)) lines.push(`${k} = ${JSON.stringify(v)}`);
  }
  fs.writeFileSync(config, lines.join('\n') + '\n');
  const env = {
    ...process.env,
    KMSBRIDGE_CONFIG: config,
    KMSBRIDGE_AGENT_SOCK: socket,
    HOME: dir,
    XDG_CONFIG_HOME: path.join(dir, 'xdg-config'),
    XDG_DATA_HOME: path.join(dir, 'xdg-data'),
    XDG_RUNTIME_DIR: path.join(dir, 'xdg-run'),
  };
  delete env.KMSBRIDGE_LOCAL_PASSPHRASE;
  delete env.NODE_OPTIONS; // tap's loader hooks are for the test file, not for the programs it runs
  return { dir, socket, config, env, file: (name) => path.join(dir, name) };
}

/** Runs the kmsbridge CLI; resolves { status, stdout, stderr } (stdout as a Buffer when asked). */
export function cli(box, args, { input, binary = false, env = {}, timeout = 60_000 } = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...box.env, ...env },
    input,
    timeout,
    encoding: binary ? 'buffer' : 'utf8',
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: binary ? r.stderr.toString() : r.stderr };
}

/** Runs the CLI and fails the test with its stderr if it does not succeed. */
export function cliOk(t, box, args, opts) {
  const r = cli(box, args, opts);
  if (r.status !== 0) t.fail(`kmsbridge ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** Starts `kmsbridge agent --foreground` as a child process and waits until its socket accepts. */
export async function startAgent(t, box, { env = {}, args = [] } = {}) {
  const child = spawn(process.execPath, [CLI, 'agent', '--foreground', ...args], { env: { ...box.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode}: ${log}`);
    if (await canConnect(box.socket)) break;
    if (Date.now() > deadline) throw new Error(`agent did not listen within 15 s: ${log}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return { child, exited, log: () => log };
}

export function canConnect(socket) {
  return new Promise((resolve) => {
    const s = net.connect(socket);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.on('error', () => resolve(false)); // on, not once: a second error must not go unhandled
  });
}

/** Runs the system openssl; returns { status, stdout, stderr }. */
export function openssl(args, { input, cwd, env } = {}) {
  const r = spawnSync('openssl', args, { input, cwd, env: env ?? process.env, timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

export function opensslOk(t, args, opts) {
  const r = openssl(args, opts);
  if (r.status !== 0) t.fail(`openssl ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}
