// Polling instead of sleeping, on both sides of the agent's socket
// (src-native/common/spin.c): while answers come quickly, a caller polls for
// its reply and the agent's serving thread polls for the peer's next request,
// each for a short while, before sleeping; anything slower must find them
// asleep.
// - A process that alternates fast signatures (which keep the channel's
//   average low) with signatures from a keyring whose backend takes 40 ms
//   spends far less CPU than the time it waits.
// - A peer that signs in a tight loop and then slows down to one request
//   every 5 ms costs the agent's serving threads far less run time than that.
// - A caller whose replies take a few hundred µs (RSA) naps, then polls: it
//   uses far less CPU than it waits, and KMSBRIDGE_POLL_US=0 turns naps off.
// Every signature is checked by node:crypto, one of each by the system
// openssl.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandbox, cliOk, startAgent, opensslOk, ROOT } from './lib/env.mjs';
import { formatRunTimes } from './lib/proc.mjs';

/**
 * Runs |source| as a Node program in |box| with |args|; asserts that it
 * ran and returns the JSON it printed last.
 */
function runProgram(t, box, name, source, args, env = {}) {
  const script = box.file(name);
  fs.writeFileSync(script, source);
  const r = spawnSync(process.execPath, [script, ...args.map(String)], { env: { ...box.env, ...env }, encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, `${name} ran: ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

/**
 * Verifies every [message, base64 signature] of |sigs| (SHA-256) with
 * node:crypto and the last one with the system openssl.
 */
function verifyAll(t, box, name, pub, sigs) {
  const bad = sigs.filter(([msg, sig]) => !crypto.verify('sha256', Buffer.from(msg), pub, Buffer.from(sig, 'base64')));
  t.equal(bad.length, 0, `all ${sigs.length} ${name} signatures verify`);
  const [msg, sig] = sigs.at(-1);
  fs.writeFileSync(box.file(`${name}.pub`), pub);
  fs.writeFileSync(box.file(`${name}.msg`), msg);
  fs.writeFileSync(box.file(`${name}.sig`), Buffer.from(sig, 'base64'));
  opensslOk(t, ['dgst', '-sha256', '-verify', box.file(`${name}.pub`), '-signature', box.file(`${name}.sig`), box.file(`${name}.msg`)]);
}

const LATENCY_MS = 40;
const ROUNDS = 10;
const PAUSE_MS = 5;
const PAUSED = 40;

// Node with the provider on the agent channel; crypto.sign (synchronous) waits
// on the main thread. Prints the signatures and the process's CPU time spent
// in the slow signatures alone.
const CLIENT = `
import crypto from 'node:crypto';
import kmsbridge from ${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))};
const [socket, fastUri, slowUri, rounds] = process.argv.slice(2);
const kb = await kmsbridge.load({ agent: socket, timeoutMs: 10000 });
const fast = kb.privateKey(fastUri);
const slow = kb.privateKey(slowUri);
const out = { fast: [], slow: [], slowCpuUs: 0, slowWallUs: 0 };
for (let i = 0; i < Number(rounds); i++) {
  for (let j = 0; j < 60; j++) {
    const msg = 'fast ' + i + ' ' + j;
    out.fast.push([msg, crypto.sign('sha256', Buffer.from(msg), fast).toString('base64')]);
  }
  const msg = 'slow ' + i;
  const c0 = process.cpuUsage();
  const w0 = process.hrtime.bigint();
  const sig = crypto.sign('sha256', Buffer.from(msg), slow);
  const c = process.cpuUsage(c0);
  out.slowWallUs += Number(process.hrtime.bigint() - w0) / 1000;
  out.slowCpuUs += c.user + c.system;
  out.slow.push([msg, sig.toString('base64')]);
}
console.log(JSON.stringify(out));
`;

t.test('a caller waiting for a slow key manager sleeps, right after fast replies', async (t) => {
  const box = sandbox(t, { keyrings: { local: { type: 'local' }, slow: { type: 'local', inject_latency_ms: LATENCY_MS } } });
  await startAgent(t, box);
  const fastUri = cliOk(t, box, ['keys', 'create', 'fast', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const slowUri = cliOk(t, box, ['keys', 'create', 'slow', '--keyring', 'slow', '--type', 'ec-p256']).trim();
  const pub = { fast: cliOk(t, box, ['keys', 'export', fastUri]), slow: cliOk(t, box, ['keys', 'export', slowUri]) };
  const out = runProgram(t, box, 'client.mjs', CLIENT, [box.socket, fastUri, slowUri, ROUNDS]);
  for (const kind of ['fast', 'slow']) verifyAll(t, box, kind, pub[kind], out[kind]);
  t.ok(out.slowWallUs >= ROUNDS * LATENCY_MS * 1000, `the slow signatures took their injected latency (${Math.round(out.slowWallUs / 1000)} ms)`);
  // A caller that polled through the wait would use about as much CPU as it
  // waited; a sleeping one uses what a signature costs, well under a
  // millisecond each.
  t.ok(
    out.slowCpuUs < out.slowWallUs / 4,
    `the process used ${Math.round(out.slowCpuUs / 1000)} ms of CPU while waiting ${Math.round(out.slowWallUs / 1000)} ms for slow signatures`,
  );
});

// A peer that signs 300 times in a loop, then 40 times with 5 ms between
// requests; it reads the agent's thread run times around the slow part.
const PEER = `
import crypto from 'node:crypto';
import kmsbridge from ${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))};
import { runTimes, since } from ${JSON.stringify(path.join(ROOT, 'test', 'lib', 'proc.mjs'))};
const [socket, uri, agentPid, pauseMs, paused] = process.argv.slice(2);
const kb = await kmsbridge.load({ agent: socket, timeoutMs: 10000 });
const key = kb.privateKey(uri);
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const sigs = [];
for (let i = 0; i < 300; i++) sigs.push(['loop ' + i, crypto.sign('sha256', Buffer.from('loop ' + i), key).toString('base64')]);
const before = runTimes(Number(agentPid));
const w0 = process.hrtime.bigint();
for (let i = 0; i < Number(paused); i++) {
  sleep(Number(pauseMs));
  sigs.push(['paused ' + i, crypto.sign('sha256', Buffer.from('paused ' + i), key).toString('base64')]);
}
const wallMs = Number(process.hrtime.bigint() - w0) / 1e6;
console.log(JSON.stringify({ sigs, agent: since(before, runTimes(Number(agentPid))), wallMs }));
`;

t.test('the agent polls for a quick peer, and stops when the peer slows down', async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'loop', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const pub = cliOk(t, box, ['keys', 'export', uri]);
  const out = runProgram(t, box, 'peer.mjs', PEER, [box.socket, uri, agent.child.pid, PAUSE_MS, PAUSED]);
  verifyAll(t, box, 'peer', pub, out.sigs);
  t.ok(out.wallMs >= PAUSED * PAUSE_MS, `the slow part took ${Math.round(out.wallMs)} ms`);
  // A serving thread that polled through the pauses would run about as long
  // as they last; one that sleeps runs for the signatures, well under a
  // millisecond each.
  const agentMs = out.agent.main + out.agent.serving + out.agent.others;
  t.ok(agentMs < out.wallMs / 4, `the agent ran ${agentMs.toFixed(1)} ms over ${Math.round(out.wallMs)} ms of a slow peer (${formatRunTimes(out.agent)})`);
});

// Voluntary context switches (a thread that went to sleep) of this process's
// main thread and of the agent's serving threads, around 1,000 signatures.
const SWITCHES = `
import crypto from 'node:crypto';
import fs from 'node:fs';
import kmsbridge from ${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))};
const [socket, uri, agentPid] = process.argv.slice(2);
const sleeps = (pid, tid) => Number(/voluntary_ctxt_switches:\\s+(\\d+)/.exec(fs.readFileSync('/proc/' + pid + '/task/' + tid + '/status', 'utf8'))[1]);
const serving = () =>
  fs.readdirSync('/proc/' + agentPid + '/task')
    .filter((tid) => fs.readFileSync('/proc/' + agentPid + '/task/' + tid + '/comm', 'utf8').trim() === 'kmsbridge-serve')
    .reduce((n, tid) => n + sleeps(agentPid, tid), 0);
const kb = await kmsbridge.load({ agent: socket, timeoutMs: 10000 });
const key = kb.privateKey(uri);
for (let i = 0; i < 100; i++) crypto.sign('sha256', Buffer.from('warm ' + i), key);
const c0 = sleeps(process.pid, process.pid), a0 = serving();
for (let i = 0; i < 1000; i++) crypto.sign('sha256', Buffer.from('loop ' + i), key);
console.log(JSON.stringify({ caller: sleeps(process.pid, process.pid) - c0, agent: serving() - a0 }));
`;

t.test('KMSBRIDGE_POLL_US=0: the caller and the agent sleep for every answer', async (t) => {
  const box = sandbox(t);
  const off = { KMSBRIDGE_POLL_US: '0' };
  const agent = await startAgent(t, box, { env: off });
  const uri = cliOk(t, box, ['keys', 'create', 'nopoll', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const n = runProgram(t, box, 'switches.mjs', SWITCHES, [box.socket, uri, agent.child.pid], off);
  // Polling, on a machine with a core free, both stay far below one each (4
  // and 38 here). The agent's threads have nothing to read until they have
  // answered, so without polling each sleeps about once per request: less
  // when a thread loses its core between its reply and its next wait and the
  // next request is there when it is back (889 of 1,000 once in CI, busy);
  // the caller finds its reply already there whenever it lost its core
  // between sending and waiting (up to 40% of the time with other tests
  // running beside it).
  t.ok(n.agent >= 500, `the serving threads slept ${n.agent} times between 1,000 requests`);
  t.ok(n.caller >= 250, `the caller slept ${n.caller} times for 1,000 replies`);
});

// RSA-3072 signatures through the agent, one at a time from the main thread;
// prints them, the addon's napStats() and the CPU time over the waits.
const NAPPER = `
import crypto from 'node:crypto';
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(path.join(ROOT, 'dist') + '/')});
const { native } = require('./native.js');
const { default: kmsbridge } = await import(${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))});
const [socket, uri, count] = process.argv.slice(2);
const kb = await kmsbridge.load({ agent: socket, timeoutMs: 10000 });
const key = kb.privateKey(uri);
for (let i = 0; i < 30; i++) crypto.sign('sha256', Buffer.from('warm ' + i), key);
const n0 = native().napStats();
const c0 = process.cpuUsage();
const w0 = process.hrtime.bigint();
const sigs = [];
for (let i = 0; i < Number(count); i++) sigs.push(['nap ' + i, crypto.sign('sha256', Buffer.from('nap ' + i), key).toString('base64')]);
const c = process.cpuUsage(c0);
const wallUs = Number(process.hrtime.bigint() - w0) / 1000;
const n1 = native().napStats();
const naps = Object.fromEntries(Object.keys(n1).map((k) => [k, n1[k] - n0[k]]));
console.log(JSON.stringify({ sigs, naps, cpuUs: c.user + c.system, wallUs }));
`;

t.test('a caller whose replies take a few hundred µs naps, then polls; not with KMSBRIDGE_POLL_US=0', async (t) => {
  const box = sandbox(t);
  await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'napper', '--keyring', 'local', '--type', 'rsa-3072']).trim();
  const pub = cliOk(t, box, ['keys', 'export', uri]);
  const COUNT = 200;
  const on = runProgram(t, box, 'napper.mjs', NAPPER, [box.socket, uri, COUNT]);
  const off = runProgram(t, box, 'napper.mjs', NAPPER, [box.socket, uri, COUNT], { KMSBRIDGE_POLL_US: '0' });
  verifyAll(t, box, 'napping', pub, on.sigs);
  verifyAll(t, box, 'sleeping', pub, off.sigs);
  // RSA-3072 replies (about 2 ms here) are in the nap's range: every wait
  // napped, or would have had a core been free (beside the rest of the suite
  // often none is). Of the naps, the learned length lets the timer wake the
  // caller before most replies (three in four here).
  const n = on.naps;
  t.ok(n.naps + n.noFreeCore >= COUNT * 0.9, `${n.naps} of ${COUNT} waits napped, ${n.noFreeCore} found no core free`);
  // A nap whose timer never fired would sleep until every reply, as before.
  // (With no core free nearly all the time there may be too few naps to say.)
  t.ok(
    n.wokenByTimer > 0 || n.naps < 5,
    `the timer woke the caller before ${n.wokenByTimer} of the ${n.naps} replies napped for${n.naps < 5 ? ': too few naps to judge' : ''}`,
  );
  // A nap that turned into polling through the wait would use about as much
  // CPU as the waits last (the signatures' own cost in Node is 100–200 µs).
  t.ok(
    on.cpuUs < on.wallUs / 2,
    `the caller used ${Math.round(on.cpuUs / 1000)} ms of CPU over ${Math.round(on.wallUs / 1000)} ms of signatures (${Math.round(off.cpuUs / 1000)} over ${Math.round(off.wallUs / 1000)} without naps; ${n.wokenByTimer} woken by the timer)`,
  );
  t.same(off.naps, { naps: 0, wokenByTimer: 0, noFreeCore: 0 }, 'with KMSBRIDGE_POLL_US=0 no wait napped');
});

// Signs with an RSA-3072 key until its waits nap, then stops the agent
// (SIGSTOP: it keeps the connection and answers nothing) and signs once
// more; prints how that ended and how long it took, and resumes the agent.
const NAP_TIMEOUT = `
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(path.join(ROOT, 'dist') + '/')});
const { native } = require('./native.js');
const { default: kmsbridge } = await import(${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))});
const [socket, uri, agentPid, timeoutMs] = process.argv.slice(2);
const kb = await kmsbridge.load({ agent: socket, timeoutMs: Number(timeoutMs) });
const key = kb.privateKey(uri);
const n0 = native().napStats();
for (let i = 0; i < 30; i++) crypto.sign('sha256', Buffer.from('warm ' + i), key);
const n1 = native().napStats();
process.kill(Number(agentPid), 'SIGSTOP');
// The stop takes effect when each of the agent's threads next enters the
// kernel: wait until all of them show it, or a serving thread still polling
// could answer the next request.
const stopped = () =>
  fs.readdirSync('/proc/' + agentPid + '/task').every((tid) => {
    try {
      return /^\\d+ \\(.*\\) [tT]/.test(fs.readFileSync('/proc/' + agentPid + '/task/' + tid + '/stat', 'utf8'));
    } catch {
      return true; // a thread that ended meanwhile
    }
  });
const until = Date.now() + 5000;
while (!stopped()) {
  if (Date.now() > until) throw new Error('the agent did not stop within 5 s');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
}
const w0 = process.hrtime.bigint();
let error = null;
try {
  crypto.sign('sha256', Buffer.from('stopped'), key);
} catch (err) {
  error = err.message;
}
const ms = Number(process.hrtime.bigint() - w0) / 1e6;
process.kill(Number(agentPid), 'SIGCONT');
console.log(JSON.stringify({ napsBefore: n1.naps - n0.naps, noFreeCoreBefore: n1.noFreeCore - n0.noFreeCore, error, ms }));
`;

t.test('a napping caller still gives up at its timeout when the agent stops answering', async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  t.teardown(() => agent.child.exitCode === null && agent.child.kill('SIGCONT'));
  const uri = cliOk(t, box, ['keys', 'create', 'stopper', '--keyring', 'local', '--type', 'rsa-3072']).trim();
  const out = runProgram(t, box, 'nap-timeout.mjs', NAP_TIMEOUT, [box.socket, uri, agent.child.pid, 500]);
  t.ok(
    out.napsBefore + out.noFreeCoreBefore >= 15,
    `the waits before were in the nap regime, half of them at least (${out.napsBefore}, ${out.noFreeCoreBefore} found no core free)`,
  );
  t.match(out.error, /kmsbridge.*agent timed out/, 'the signature failed with the agent timeout');
  t.ok(out.ms >= 450 && out.ms < 5000, `after ${Math.round(out.ms)} ms`);
  // The agent, resumed, still answers.
  const pub = cliOk(t, box, ['keys', 'export', uri]);
  t.match(pub, /BEGIN PUBLIC KEY/, 'the resumed agent answers');
});

// The N-API bridge (src-native/node/bridge.c): the in-process KeyService
// worker's event loop polls for the next request before it sleeps. Requests
// are PING frames through the real bridge and worker (the addon's
// channelPing). Prints the voluntary context switches (sleeps) of the main
// thread and of all the others (the worker among them) over 1,000 requests
// back to back, then the process's CPU time over 40 requests 5 ms apart.
const BRIDGE = `
import fs from 'node:fs';
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(path.join(ROOT, 'dist') + '/')});
const { native } = require('./native.js');
const { default: kmsbridge } = await import(${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))});
const [pauseMs, paused] = process.argv.slice(2).map(Number);
const sleeps = () => {
  const n = { main: 0, others: 0 };
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      const v = Number(/voluntary_ctxt_switches:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/task/' + tid + '/status', 'utf8'))[1]);
      n[Number(tid) === process.pid ? 'main' : 'others'] += v;
    } catch {} // a thread that ended meanwhile
  }
  return n;
};
const kb = await kmsbridge.load();
const addon = native();
addon.channelPing(200);
const s0 = sleeps();
const p0 = addon.bridgeStats().workerPolls;
addon.channelPing(1000);
const polls = addon.bridgeStats().workerPolls - p0;
const s1 = sleeps();
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const c0 = process.cpuUsage();
const w0 = process.hrtime.bigint();
for (let i = 0; i < paused; i++) {
  sleep(pauseMs);
  addon.channelPing(1);
}
const c = process.cpuUsage(c0);
const wallUs = Number(process.hrtime.bigint() - w0) / 1000;
await kb.close();
console.log(JSON.stringify({ main: s1.main - s0.main, others: s1.others - s0.others, polls, cpuUs: c.user + c.system, wallUs }));
`;

t.test('the in-process worker polls for a quick caller, stops when the caller slows down, and not at all with KMSBRIDGE_POLL_US=0', async (t) => {
  const box = sandbox(t);
  const on = runProgram(t, box, 'bridge.mjs', BRIDGE, [PAUSE_MS, PAUSED]);
  // A worker that polled through the pauses would use about as much CPU as
  // they last; one that sleeps uses what a request costs, microseconds.
  t.ok(on.wallUs >= PAUSED * PAUSE_MS * 1000, `the slow part took ${Math.round(on.wallUs / 1000)} ms`);
  t.ok(on.cpuUs < on.wallUs / 4, `the process used ${Math.round(on.cpuUs / 1000)} ms of CPU over ${Math.round(on.wallUs / 1000)} ms of a slow caller`);
  const off = runProgram(t, box, 'bridge.mjs', BRIDGE, [PAUSE_MS, PAUSED], { KMSBRIDGE_POLL_US: '0' });
  // Polling, with a core free, the worker polls before nearly every request
  // and its side sleeps a few dozen times in 1,000 (62 here); without, it
  // sleeps whenever it has answered before the next request comes (826 here
  // when quiet, 306 beside the rest of the suite: when its thread loses its
  // core the next request is there when it comes back), and the caller for
  // nearly every reply. On a busy machine nobody polls either way.
  t.equal(off.polls, 0, `without polling the worker never polled (${on.polls} times in 1,000 requests with it)`);
  t.ok(off.main >= 500, `the caller slept ${off.main} times (${on.main} polling); the worker's side ${off.others} (${on.others} polling)`);
});
