#!/usr/bin/env node
// npm run bench [-- --quick] [-- --out DIR]
//
// Benchmarks kmsbridge side by side with file keys and the PKCS#11 peer
// (libp11's engine on SoftHSM2), interleaving the variants round by round:
// this machine drifts over minutes, so every variant is compared with the
// baseline measured in the same round, and the report gives medians of those
// per-round ratios with their min–max. Benchmarks, not tests: nothing fails on
// a slow machine. See docs/bench/latest.md for what each figure means.
//
// A full run writes docs/bench/latest.{md,json,svg} and the README's table;
// --quick (about a minute) writes build/bench/quick.* only; --render FILE.json
// writes the tables and chart again from a run's JSON (after a report change).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ALGS, KBBENCH, MODULE, MODULES, ROOT, SOFTHSM_LIB, build, engineAvailability, machine, setup, sleep, track } from './bench/env.mjs';
import { writeReport } from './bench/report.mjs';

const argv = process.argv.slice(2);
const QUICK = argv.includes('--quick');
const OUT = argv.includes('--out')
  ? path.resolve(argv[argv.indexOf('--out') + 1])
  : QUICK
    ? path.join(ROOT, 'build', 'bench')
    : path.join(ROOT, 'docs', 'bench');

const PLAN = QUICK
  ? {
      rounds: 2,
      signAlgs: ['RSA-2048', 'P-256'],
      signThreads: [1],
      signSeconds: 0.2,
      pkeyutlAlgs: ['RSA-2048', 'P-256'],
      pkeyutlCount: 3,
      tlsAlgs: ['RSA-2048', 'P-256'],
      tlsVersions: ['1.3'],
      tlsThreads: 4,
      tlsSeconds: 0.3,
      tlsRounds: 2,
      pingCount: 500,
      slowLatencies: [20],
      slowClients: [1, 32],
      slowProcesses: 4,
      slowSeconds: 0.5,
      slowRounds: 1,
      memKeys: 200,
      memRuns: 1,
    }
  : {
      rounds: 4,
      signAlgs: Object.keys(ALGS),
      signThreads: [1, 4, 16],
      signSeconds: 0.5,
      pkeyutlAlgs: ['RSA-2048', 'P-256'],
      pkeyutlCount: 8,
      tlsAlgs: ['RSA-2048', 'P-256'],
      tlsVersions: ['1.2', '1.3'],
      tlsThreads: 4,
      tlsSeconds: 0.7,
      // The handshake rows swing most from round to round (one server, four clients, the agent on two
      // cores) and carry the provider's goals: twice the rounds, for a steadier median.
      tlsRounds: 8,
      pingCount: 5000,
      slowLatencies: [0, 5, 20],
      slowClients: [1, 8, 32],
      slowProcesses: 4,
      slowSeconds: 2.0,
      slowRounds: 2,
      memKeys: 1000,
      memRuns: 3,
    };

const T0 = Date.now();
function progress(msg) {
  const s = Math.round((Date.now() - T0) / 1000);
  process.stderr.write(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${msg}\n`);
}

/** Runs a command we own to completion: { code, stdout, stderr }. */
function exec(cmd, args, env, timeoutMs = 300_000) {
  return new Promise((resolve) => {
    const c = track(spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr = (stderr + d).slice(-8000)));
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

/** The JSON line a measurement prints, or throws with the reason it failed. */
async function measure(cmd, args, env) {
  const r = await exec(cmd, args, env);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !line.startsWith('{')) {
    const why = r.stderr
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !/^\s*at /.test(l));
    throw new Error(why.slice(-3).join(' | ').slice(0, 300) || `exit ${r.code}`);
  }
  return JSON.parse(line);
}

const CLK_TCK = 100; // Linux's USER_HZ on every architecture Debian ships
function cpuUs(pids) {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime
    } catch {
      // gone
    }
  }
  return (ticks * 1e6) / CLK_TCK;
}

function rssKiB(pid) {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
  } catch {
    return null;
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitPort(port, child, log) {
  for (let i = 0; i < 400; i++) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`server exited: ${log().trim().split('\n').slice(-2).join(' | ')}`);
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), r(true)));
      s.once('error', () => r(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error('server did not listen within 20 s');
}

/** Rotates |list| by |n|: each round starts with another variant. */
function rotate(list, n) {
  const k = n % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

/*
 * A row: one thing measured (an algorithm and thread count, a server…), with
 * per-variant per-round figures. cells[variant] = { rounds: [figures|null], error? }
 */
function newRow(section, key, variants) {
  const row = { section, key, cells: {} };
  for (const v of variants) row.cells[v] = { rounds: [] };
  return row;
}

async function runCell(row, variant, round, label, fn) {
  const cell = row.cells[variant];
  if (cell.error) return;
  try {
    cell.rounds[round] = await fn();
  } catch (err) {
    cell.error = err.message;
    progress(`  ${label}: skipped from now on: ${err.message}`);
  }
}

// ---- variants ----------------------------------------------------------------

const PROV = ['--provider-path', MODULES, '--provider', 'default', '--provider', 'kmsbridge'];
const OSSL_FLAGS = ['-provider-path', MODULES, '-provider', 'default', '-provider', 'kmsbridge'];

export const VARIANTS = {
  file: '(a) PEM file, default provider',
  provider: '(b) provider → agent → local',
  engine: '(c) ENGINE → agent → local',
  'node-pem': 'Node, PEM key',
  'node-kms': '(d) Node in-process, kms: KeyObject',
  hsm: '(e) provider → agent → PKCS#11 → SoftHSM2',
  libp11: '(f) libp11 ENGINE → SoftHSM2',
  'node-agent': '(b) Node keyRef → agent → local',
  'node-engine': '(c) Node ENGINE, in-process',
  'node-keyref': '(d) Node keyRef, in-process',
  'node-pkcs11': '(f) Node + libp11 ENGINE → SoftHSM2',
};

function digestFor(alg) {
  return alg === 'Ed25519' ? 'none' : alg === 'P-384' ? 'sha384' : 'sha256';
}

// ---- 1. signatures -------------------------------------------------------------

async function signSection(ctx, avail) {
  const variants = ['file', 'provider', 'engine', 'hsm', 'libp11', 'node-pem', 'node-kms'];
  const rows = [];
  for (const alg of PLAN.signAlgs) for (const threads of PLAN.signThreads) rows.push(newRow('sign', { alg, threads }, variants));
  for (const row of rows) {
    if (avail.kmsEngine) row.cells.engine.error = avail.kmsEngine;
    if (avail.libp11) row.cells.libp11.error = avail.libp11;
    // libp11 0.4.12 (Debian 12) knows no CKK_EC_EDWARDS key: it reports Ed25519 objects as "object not found"
    else if (row.key.alg === 'Ed25519') row.cells.libp11.error = 'libp11 0.4.12 has no EdDSA support (Ed25519 objects are "not found")';
  }
  const secs = String(PLAN.signSeconds);
  for (let r = 0; r < PLAN.rounds; r++) {
    progress(`1. signatures: round ${r + 1}/${PLAN.rounds}`);
    for (const row of rows) {
      const { alg, threads } = row.key;
      const k = ctx.keys[alg];
      for (const v of rotate(variants, r + rows.indexOf(row))) {
        await runCell(row, v, r, `${alg} ×${threads} ${VARIANTS[v]}`, async () => {
          const common = ['--threads', String(threads), '--seconds', secs];
          if (v === 'node-pem' || v === 'node-kms') {
            // N > 1: callback crypto.sign on libuv's pool, sized N + 4 (see docs/bench/latest.md)
            const env = { ...ctx.env, UV_THREADPOOL_SIZE: String(threads + 4) };
            return measure(
              process.execPath,
              [path.join(ROOT, 'scripts', 'bench', 'node-sign.mjs'), v === 'node-pem' ? k.pem : k.local, digestFor(alg), String(threads), secs],
              env,
            );
          }
          const args = {
            file: ['--key', k.pem],
            provider: [...PROV, '--key', k.local],
            engine: ['--engine', MODULE, '--key', k.local],
            hsm: [...PROV, '--key', k.hsm],
            libp11: ['--engine', 'pkcs11', '--engine-ctrl', `MODULE_PATH:${SOFTHSM_LIB}`, '--key', k.p11],
          }[v];
          return measure(KBBENCH, ['sign', ...args, ...common], ctx.env);
        });
      }
      const f = (v) => row.cells[v].rounds[r]?.opsPerSec;
      progress(`  ${alg} ×${threads}: ${variants.map((v) => `${v} ${f(v) ? Math.round(f(v)) : '–'}`).join(', ')} signs/s`);
    }
  }
  return rows;
}

// ---- 2. openssl pkeyutl -sign per command ----------------------------------------

async function pkeyutlSection(ctx, avail) {
  const variants = ['file', 'provider', 'engine', 'hsm', 'libp11'];
  const rows = PLAN.pkeyutlAlgs.map((alg) => newRow('pkeyutl', { alg }, variants));
  for (const row of rows) {
    if (avail.kmsEngine) row.cells.engine.error = avail.kmsEngine;
    if (avail.libp11) row.cells.libp11.error = avail.libp11;
  }
  const dgst = ctx.file('digest.bin');
  fs.writeFileSync(dgst, Buffer.alloc(32, 0x5a));
  for (let r = 0; r < PLAN.rounds; r++) {
    progress(`2. openssl pkeyutl -sign: round ${r + 1}/${PLAN.rounds}`);
    for (const row of rows) {
      const k = ctx.keys[row.key.alg];
      for (const v of rotate(variants, r)) {
        await runCell(row, v, r, `pkeyutl ${row.key.alg} ${VARIANTS[v]}`, () => {
          const sign = ['-sign', '-in', dgst, '-out', '/dev/null', '-pkeyopt', 'digest:sha256'];
          const cmd = {
            file: ['pkeyutl', '-inkey', k.pem, ...sign],
            provider: ['pkeyutl', ...OSSL_FLAGS, '-inkey', k.local, ...sign],
            engine: ['pkeyutl', '-engine', MODULE, '-keyform', 'engine', '-inkey', k.local, ...sign],
            hsm: ['pkeyutl', ...OSSL_FLAGS, '-inkey', k.hsm, ...sign],
            libp11: ['pkeyutl', '-engine', 'pkcs11', '-keyform', 'engine', '-inkey', k.p11, ...sign],
          }[v];
          const env = v === 'libp11' ? { ...ctx.env, OPENSSL_CONF: ctx.p11conf } : ctx.env;
          return measure(KBBENCH, ['exec', '--count', String(PLAN.pkeyutlCount), '--', 'openssl', ...cmd], env);
        });
      }
      const f = (v) => row.cells[v].rounds[r]?.latUsMedian;
      progress(`  ${row.key.alg}: ${variants.map((v) => `${v} ${f(v) ? (f(v) / 1000).toFixed(1) : '–'}`).join(', ')} ms/command`);
    }
  }
  return rows;
}

// ---- 3. TLS handshakes -----------------------------------------------------------

async function startServer(ctx, kind, variant, alg, processes = 1, keyOverride) {
  const k = ctx.keys[alg];
  const port = await freePort();
  let child;
  let log = '';
  if (kind === 's_server') {
    const base = ['s_server', '-accept', `127.0.0.1:${port}`, '-no-CAfile', '-no-CApath', '-no-CAstore', '-quiet'];
    const args = {
      file: [...base, '-key', k.pem, '-cert', k.cert],
      provider: [...base, ...OSSL_FLAGS, '-key', k.local, '-cert', k.localCert],
      engine: [...base, '-engine', MODULE, '-keyform', 'engine', '-key', k.local, '-cert', k.localCert],
      hsm: [...base, ...OSSL_FLAGS, '-key', k.hsm, '-cert', k.hsmCert],
      libp11: [...base, '-engine', 'pkcs11', '-keyform', 'engine', '-key', k.p11, '-cert', k.hsmCert],
    }[variant];
    const env = variant === 'libp11' ? { ...ctx.env, OPENSSL_CONF: ctx.p11conf } : ctx.env;
    child = track(spawn('openssl', args, { env, stdio: ['pipe', 'ignore', 'pipe'] }));
    child.stderr.on('data', (d) => (log = (log + d).slice(-4000)));
    await waitPort(port, child, () => log);
    return { port, pids: [child.pid], child, uses: variant === 'file' || variant === 'libp11' ? [] : ['agent'] };
  }
  // Node https
  const route = { 'node-pem': 'pem', 'node-agent': 'agent', 'node-engine': 'engine', 'node-keyref': 'keyref', 'node-pkcs11': 'pkcs11' }[variant];
  const key = keyOverride ?? { pem: k.pem, pkcs11: k.p11 }[route] ?? k.local;
  const cert = { pem: k.cert, pkcs11: k.hsmCert }[route] ?? k.localCert;
  const env = route === 'pkcs11' ? { ...ctx.env, OPENSSL_CONF: ctx.p11conf } : ctx.env;
  child = track(
    spawn(process.execPath, [path.join(ROOT, 'scripts', 'bench', 'https-server.mjs'), route, key, cert, String(processes)], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  child.stderr.on('data', (d) => (log = (log + d).slice(-4000)));
  const info = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('the Node server did not start within 60 s')), 60_000);
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(
        new Error(
          `the Node server exited (${code}): ${log
            .trim()
            .split('\n')
            .filter((l) => l.trim() && !/^\s+at |^Node\.js v/.test(l))
            .slice(-2)
            .join(' | ')}`,
        ),
      );
    });
  });
  return { port: info.port, pids: info.pids, child, uses: route === 'agent' ? ['agent'] : [] };
}

async function stopServer(s) {
  if (!s || s.child.exitCode !== null || s.child.signalCode !== null) return;
  const done = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  const t = setTimeout(() => s.child.kill('SIGKILL'), 3000);
  await done;
  clearTimeout(t);
}

/** One handshake measurement against a running server; adds server and agent CPU per handshake. */
async function handshakes(ctx, server, tls, threads, seconds) {
  const agentPids = server.uses.includes('agent') && ctx.agent ? [ctx.agent.pid] : [];
  const s0 = cpuUs(server.pids);
  const a0 = cpuUs(agentPids);
  const m = await measure(KBBENCH, ['tls', '--port', String(server.port), '--tls', tls, '--threads', String(threads), '--seconds', String(seconds)], ctx.env);
  const n = m.handshakes + 1; // kbbench's first, untimed check handshake
  if (m.handshakes === 0) throw new Error(`no handshake completed (${m.failed} failed)`);
  return { ...m, serverCpuUs: (cpuUs(server.pids) - s0) / n, totalCpuUs: (cpuUs(server.pids) - s0 + cpuUs(agentPids) - a0) / n };
}

async function tlsSection(ctx, avail) {
  const kinds = {
    s_server: ['file', 'provider', 'engine', 'hsm', 'libp11'],
    node: ['node-pem', 'node-agent', 'node-engine', 'node-keyref', 'node-pkcs11'],
  };
  const rows = [];
  const servers = new Map();
  progress('3. TLS: starting the servers');
  for (const [kind, variants] of Object.entries(kinds)) {
    for (const alg of PLAN.tlsAlgs) {
      const sub = PLAN.tlsVersions.map((tls) => newRow('tls', { server: kind, tls, alg }, variants));
      rows.push(...sub);
      for (const v of variants) {
        const unavailable =
          (v === 'engine' || v === 'node-engine') && avail.kmsEngine
            ? avail.kmsEngine
            : (v === 'libp11' || v === 'node-pkcs11') && avail.libp11
              ? avail.libp11
              : null;
        try {
          if (unavailable) throw new Error(unavailable);
          servers.set(`${kind}/${alg}/${v}`, await startServer(ctx, kind, v, alg));
        } catch (err) {
          for (const row of sub) row.cells[v].error = err.message;
          progress(`  ${kind} ${alg} ${VARIANTS[v]}: skipped: ${err.message}`);
        }
      }
    }
  }
  try {
    for (let r = 0; r < PLAN.tlsRounds; r++) {
      progress(`3. TLS handshakes: round ${r + 1}/${PLAN.tlsRounds}`);
      for (const row of rows) {
        const { server: kind, tls, alg } = row.key;
        for (const v of rotate(kinds[kind], r)) {
          const s = servers.get(`${kind}/${alg}/${v}`);
          if (!s) continue;
          await runCell(row, v, r, `${kind} TLS ${tls} ${alg} ${VARIANTS[v]}`, () => handshakes(ctx, s, tls, PLAN.tlsThreads, PLAN.tlsSeconds));
        }
        const f = (v) => row.cells[v].rounds[r];
        progress(
          `  ${kind} TLS ${tls} ${alg}: ${kinds[kind].map((v) => `${v} ${f(v) ? `${Math.round(f(v).perSec)}/s ${Math.round(f(v).totalCpuUs)}µs` : '–'}`).join(', ')}`,
        );
      }
    }
  } finally {
    for (const s of servers.values()) await stopServer(s);
  }
  return rows;
}

// ---- 4. the channel's no-op round trip ----------------------------------------------

async function pingSection(ctx) {
  // pair-*: the machine's own cost of a round trip in which each side sleeps (no kmsbridge code), for comparison
  const variants = ['agent', 'napi', 'pair-processes', 'pair-threads'];
  const row = newRow('ping', { what: 'PING' }, variants);
  for (let r = 0; r < PLAN.rounds; r++) {
    progress(`4. channel no-op round trip: round ${r + 1}/${PLAN.rounds}`);
    for (const v of rotate(variants, r)) {
      const count = String(PLAN.pingCount);
      await runCell(row, v, r, `ping ${v}`, () =>
        v === 'agent'
          ? measure(KBBENCH, ['ping', '--socket', ctx.sock, '--count', count], ctx.env)
          : v === 'napi'
            ? measure(process.execPath, [path.join(ROOT, 'scripts', 'bench', 'napi-ping.mjs'), count], ctx.env)
            : measure(KBBENCH, ['pingpong', '--between', v.slice('pair-'.length), '--count', count], ctx.env),
      );
    }
    const f = (v) => row.cells[v].rounds[r]?.latUsMedian?.toFixed(1) ?? '–';
    progress(
      `  agent socket ${f('agent')} µs, N-API bridge ${f('napi')} µs; sleeping round trip between processes ${f('pair-processes')} µs, threads ${f('pair-threads')} µs (medians)`,
    );
  }
  return [row];
}

// ---- 5. slow key managers --------------------------------------------------------------

async function slowSection(ctx) {
  const modes = ['single', 'cluster'];
  const rows = [];
  const servers = new Map();
  progress(`5. slow key managers: starting Node servers (1 process and node:cluster × ${PLAN.slowProcesses})`);
  for (const lat of PLAN.slowLatencies) {
    const keyring = lat === 0 ? 'local' : `slow${lat}`;
    for (const clients of PLAN.slowClients) rows.push(newRow('slow', { latencyMs: lat, clients }, modes));
    for (const mode of modes) {
      try {
        servers.set(
          `${lat}/${mode}`,
          await startServer(ctx, 'node', 'node-keyref', 'P-256', mode === 'single' ? 1 : PLAN.slowProcesses, `kms:${keyring}/${ALGS['P-256'].name}`),
        );
      } catch (err) {
        for (const row of rows.filter((x) => x.key.latencyMs === lat)) row.cells[mode].error = err.message;
        progress(`  ${lat} ms ${mode}: skipped: ${err.message}`);
      }
    }
  }
  try {
    for (let r = 0; r < PLAN.slowRounds; r++) {
      progress(`5. slow key managers: round ${r + 1}/${PLAN.slowRounds}`);
      for (const row of rows) {
        for (const mode of rotate(modes, r)) {
          const s = servers.get(`${row.key.latencyMs}/${mode}`);
          if (!s) continue;
          await runCell(row, mode, r, `slow ${row.key.latencyMs} ms ×${row.key.clients} ${mode}`, () =>
            handshakes(ctx, s, '1.3', row.key.clients, PLAN.slowSeconds),
          );
        }
        const f = (m) => row.cells[m].rounds[r]?.perSec;
        progress(
          `  ${row.key.latencyMs} ms, ${row.key.clients} clients: 1 process ${f('single') ? Math.round(f('single')) : '–'}/s, cluster ${f('cluster') ? Math.round(f('cluster')) : '–'}/s`,
        );
      }
    }
  } finally {
    for (const s of servers.values()) await stopServer(s);
  }
  return rows;
}

// ---- 6. memory ----------------------------------------------------------------------------

async function memorySection(ctx) {
  progress(`6. memory: an agent with ${PLAN.memKeys} keys; Node with and without the addon`);
  const out = { agentMainRssKiB: ctx.agent ? rssKiB(ctx.agent.pid) : null };
  // a second agent of its own, on its own socket and keyring
  const sock = ctx.file('run/mem-agent.sock');
  const agent = track(
    spawn(process.execPath, [path.join(ROOT, 'dist', 'cli', 'main.js'), 'agent', '--foreground'], {
      env: { ...ctx.env, KMSBRIDGE_AGENT_SOCK: sock },
      stdio: 'ignore',
    }),
  );
  try {
    for (let i = 0; i < 300 && !fs.existsSync(sock); i++) await sleep(50);
    await sleep(500);
    out.agentEmptyRssKiB = rssKiB(agent.pid);
    const t = Date.now();
    await measure(process.execPath, [path.join(ROOT, 'scripts', 'bench', 'memory.mjs'), 'keys', sock, 'mem', String(PLAN.memKeys)], ctx.env);
    out.agentKeysSeconds = (Date.now() - t) / 1000;
    await sleep(500);
    out.agentKeysRssKiB = rssKiB(agent.pid);
    out.agentKeys = PLAN.memKeys;
  } catch (err) {
    out.agentError = err.message;
  } finally {
    agent.kill('SIGTERM');
  }
  for (const mode of ['plain', 'require', 'load']) {
    const runs = [];
    for (let i = 0; i < PLAN.memRuns; i++) {
      try {
        runs.push((await measure(process.execPath, [path.join(ROOT, 'scripts', 'bench', 'memory.mjs'), 'node', mode], ctx.env)).rssKiB);
      } catch (err) {
        out[`node_${mode}_error`] = err.message;
      }
    }
    out[`node_${mode}_RssKiB`] = runs.sort((a, b) => a - b)[runs.length >> 1] ?? null;
  }
  progress(
    `  agent ${out.agentEmptyRssKiB} KiB empty, ${out.agentKeysRssKiB} KiB with ${PLAN.memKeys} keys; Node ${out.node_plain_RssKiB} KiB, +addon ${out.node_require_RssKiB} KiB, after load() ${out.node_load_RssKiB} KiB`,
  );
  return out;
}

// ---- main ------------------------------------------------------------------------------------

async function main() {
  build(progress);
  const mach = machine();
  progress(`machine: ${mach.cpu}, ${mach.cores} cores, ${mach.openssl}, Node ${mach.node} (OpenSSL ${mach.nodeOpenssl}), load ${mach.loadavg.join(' ')}`);
  progress(`plan: ${QUICK ? 'quick' : 'full'}, ${PLAN.rounds} interleaved rounds; output to ${path.relative(ROOT, OUT) || '.'}`);
  const avail = engineAvailability();
  for (const [k, why] of Object.entries(avail)) if (why) progress(`${k === 'kmsEngine' ? '(c) kmsbridge ENGINE' : '(f) libp11'}: skipped: ${why}`);
  const algs = [...new Set([...PLAN.signAlgs, ...PLAN.tlsAlgs, ...PLAN.pkeyutlAlgs, 'P-256'])];
  const ctx = await setup(algs, progress);
  const onSignal = () => {
    progress('interrupted: stopping what the bench started');
    ctx.cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const results = { machine: mach, plan: { quick: QUICK, ...PLAN }, started: new Date(T0).toISOString(), variants: VARIANTS, rows: [] };
  try {
    results.rows.push(...(await pingSection(ctx)));
    results.rows.push(...(await signSection(ctx, avail)));
    results.rows.push(...(await pkeyutlSection(ctx, avail)));
    results.rows.push(...(await tlsSection(ctx, avail)));
    results.rows.push(...(await slowSection(ctx)));
    results.memory = await memorySection(ctx);
  } finally {
    await ctx.cleanup();
  }
  results.seconds = Math.round((Date.now() - T0) / 1000);
  results.machine.loadavgEnd = (await import('node:os')).loadavg().map((x) => Number(x.toFixed(2)));
  const files = writeReport(results, OUT, { readme: QUICK ? null : path.join(ROOT, 'README.md') });
  progress(`done in ${results.seconds} s: ${files.map((f) => path.relative(ROOT, f)).join(', ')}`);
}

async function render(file) {
  const results = JSON.parse(fs.readFileSync(file, 'utf8'));
  delete results.goals;
  const files = writeReport(results, path.dirname(path.resolve(file)), { readme: results.plan.quick ? null : path.join(ROOT, 'README.md') });
  progress(`rendered ${files.map((f) => path.relative(ROOT, f)).join(', ')}`);
}

(argv.includes('--render') ? render(argv[argv.indexOf('--render') + 1]) : main()).catch((err) => {
  progress(`failed: ${err.stack ?? err}`);
  process.exit(1);
});
