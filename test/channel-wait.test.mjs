// How a caller of the agent channel waits for its reply (src-native/common/
// channel_agent.c): while replies come back within tens of microseconds it
// polls its socket for a short while before sleeping; a slow key manager
// must still find it asleep. A process that alternates fast signatures (which
// keep the channel's average low) with signatures from a keyring whose
// backend takes 40 ms must spend far less CPU than the time it waits. Every
// signature is checked by node:crypto, one of each by the system openssl.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandbox, cliOk, startAgent, opensslOk, ROOT } from './lib/env.mjs';

const LATENCY_MS = 40;
const ROUNDS = 10;

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
  const script = box.file('client.mjs');
  fs.writeFileSync(script, CLIENT);
  const r = spawnSync(process.execPath, [script, box.socket, fastUri, slowUri, String(ROUNDS)], { env: box.env, encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, `the client ran: ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop());
  for (const kind of ['fast', 'slow']) {
    const bad = out[kind].filter(([msg, sig]) => !crypto.verify('sha256', Buffer.from(msg), pub[kind], Buffer.from(sig, 'base64')));
    t.equal(bad.length, 0, `all ${out[kind].length} ${kind} signatures verify`);
    const [msg, sig] = out[kind].at(-1);
    fs.writeFileSync(box.file(`${kind}.pub`), pub[kind]);
    fs.writeFileSync(box.file(`${kind}.msg`), msg);
    fs.writeFileSync(box.file(`${kind}.sig`), Buffer.from(sig, 'base64'));
    opensslOk(t, ['dgst', '-sha256', '-verify', box.file(`${kind}.pub`), '-signature', box.file(`${kind}.sig`), box.file(`${kind}.msg`)]);
  }
  t.ok(out.slowWallUs >= ROUNDS * LATENCY_MS * 1000, `the slow signatures took their injected latency (${Math.round(out.slowWallUs / 1000)} ms)`);
  // A caller that polled through the wait would use about as much CPU as it
  // waited; a sleeping one uses what a signature costs, well under a
  // millisecond each.
  t.ok(
    out.slowCpuUs < out.slowWallUs / 4,
    `the process used ${Math.round(out.slowCpuUs / 1000)} ms of CPU while waiting ${Math.round(out.slowWallUs / 1000)} ms for slow signatures`,
  );
});
