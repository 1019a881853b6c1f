// The agent channel's pool after the agent restarts (src-native/common/
// channel_agent.c): a process that has several pooled connections to an
// agent keeps signing, from several threads at once, across a restart of
// that agent. The first request on each dead connection fails before
// anything is sent (EPIPE); the pool drops its other idle connections and the
// request is retried once on a fresh one. Signatures are checked by
// node:crypto and one by the system openssl.
import t from 'tap';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { sandbox, cliOk, startAgent, opensslOk, ROOT } from './lib/env.mjs';

// The client: Node with the provider on the agent channel; crypto.sign with a
// callback runs on libuv's pool, so eight calls use four threads and as many
// pooled connections. It signs a round on each line it reads (one signature
// alone for a line starting with 'one').
const CLIENT = `
import crypto from 'node:crypto';
import readline from 'node:readline';
import kmsbridge from ${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))};
const [socket, uri] = process.argv.slice(2);
const kb = await kmsbridge.load({ agent: socket, timeoutMs: 10000 });
const key = kb.privateKey(uri);
const round = (tag) => Promise.all(Array.from({ length: tag.startsWith('one') ? 1 : 8 }, (_, i) => new Promise((resolve) => {
  const msg = Buffer.from(tag + ' ' + i);
  crypto.sign('sha256', msg, key, (err, sig) => resolve(err ? { error: String(err.message) } : { msg: msg.toString(), sig: sig.toString('base64') }));
})));
for await (const line of readline.createInterface({ input: process.stdin })) {
  console.log(JSON.stringify(await round(line)));
}
`;

t.test('signatures, alone and eight at once, keep working across an agent restart, with no failure', async (t) => {
  const box = sandbox(t);
  let agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'pool', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const pubPem = cliOk(t, box, ['keys', 'export', uri]);
  const script = box.file('client.mjs');
  fs.writeFileSync(script, CLIENT);
  const child = spawn(process.execPath, [script, box.socket, uri], { env: { ...box.env, UV_THREADPOOL_SIZE: '4' }, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  t.teardown(() => child.kill('SIGKILL'));
  const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const round = async (tag) => {
    child.stdin.write(`${tag}\n`);
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const { value, done } = await lines.next();
    clearTimeout(timer);
    if (done) throw new Error(`the client ended: ${stderr}`);
    return JSON.parse(value);
  };
  const check = (results, what) => {
    const failed = results.filter((r) => r.error);
    t.same(failed, [], `${what}: no signature failed`);
    t.ok(
      results.every((r) => !r.error && crypto.verify('sha256', Buffer.from(r.msg), pubPem, Buffer.from(r.sig, 'base64'))),
      `${what}: all ${results.length} verify`,
    );
  };

  check(await round('before'), 'before the restart');
  agent.child.kill('SIGTERM');
  await agent.exited;
  agent = await startAgent(t, box);
  // One signature alone first: it meets dead pooled connections one after another.
  check(await round('one after'), 'the first signature after the restart');
  const after = await round('after');
  check(after, 'after the restart, on the pooled connections to the old agent');
  check(await round('again'), 'and the round after');

  fs.writeFileSync(box.file('p.pub'), pubPem);
  fs.writeFileSync(box.file('m.msg'), after[7].msg);
  fs.writeFileSync(box.file('m.sig'), Buffer.from(after[7].sig, 'base64'));
  opensslOk(t, ['dgst', '-sha256', '-verify', box.file('p.pub'), '-signature', box.file('m.sig'), box.file('m.msg')]);
  child.stdin.end();
});
