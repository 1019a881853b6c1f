// Where the agent runs an RSA operation: on its event loop while one client
// asks at a time (cheaper by the pool's two thread hand-offs), on libuv's
// pool when requests wait (so one agent uses every core). The schedule is
// read from /proc (run time of the agent's main thread against its other
// threads); every signature and plaintext is checked by the system openssl
// or node:crypto, in both schedules.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { sandbox, cliOk, startAgent, opensslOk } from './lib/env.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { native } from '../dist/native.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

/** Nanoseconds each thread of |pid| has run (schedstat), main thread apart. */
function runTimes(pid) {
  let main = 0;
  let others = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const ns = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    if (Number(tid) === pid) main += ns;
    else others += ns;
  }
  return { main, others };
}

const since = (a, b) => ({ main: (b.main - a.main) / 1e6, others: (b.others - a.others) / 1e6 });

t.test('the waiting set sees bytes a connection has not read yet, and only those', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-waiting-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const set = native().waitingSet();
  t.equal(native().waitingAny(set), false, 'an empty set: nobody waits');
  const accepted = new Promise((resolve) => {
    const server = net.createServer({ pauseOnConnect: true }, (sock) => resolve({ server, sock }));
    server.listen(path.join(dir, 's.sock'));
  });
  const client = net.connect(path.join(dir, 's.sock'));
  const { server, sock } = await accepted;
  t.teardown(() => (client.destroy(), sock.destroy(), server.close()));
  native().waitingAdd(set, sock._handle.fd);
  t.equal(native().waitingAny(set), false, 'a quiet connection does not wait');
  client.write('a request');
  const deadline = Date.now() + 5000;
  while (!native().waitingAny(set) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  t.equal(native().waitingAny(set), true, 'unread bytes: someone waits');
  const data = new Promise((r) => sock.once('data', r));
  sock.resume();
  t.equal(String(await data), 'a request');
  t.equal(native().waitingAny(set), false, 'once read, nobody waits');
  t.throws(() => native().waitingAdd(set, -1), /expected a waiting set and a socket file descriptor/);
});

t.test('RSA through the agent: on the event loop for one client at a time, on the pool under concurrent load; right in both', async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'sched', '--keyring', 'local', '--type', 'rsa-2048']).trim();
  const pem = cliOk(t, box, ['keys', 'export', uri]);
  const pubFile = box.file('sched.pub.pem');
  fs.writeFileSync(pubFile, pem);
  const pub = crypto.createPublicKey(pem);
  const sign = (c, msg, pss) =>
    c
      .request(MsgType.SIGN, [
        { tag: Tag.URI, value: uri },
        { tag: Tag.ALGORITHM, value: pss ? 'rsa-pss' : 'rsa-pkcs1' },
        { tag: Tag.DIGEST, value: 'sha256' },
        ...(pss ? [{ tag: Tag.SALT_LENGTH, value: 32 }] : []),
        { tag: Tag.DATA, value: crypto.createHash('sha256').update(msg).digest() },
      ])
      .then((f) => f.requireBytes(Tag.RESULT));
  const verifiesWithOpenssl = (msg, sig, pss, name) => {
    fs.writeFileSync(box.file(`${name}.msg`), msg);
    fs.writeFileSync(box.file(`${name}.sig`), sig);
    const pad = pss ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : [];
    opensslOk(t, ['dgst', '-sha256', '-verify', pubFile, ...pad, '-signature', box.file(`${name}.sig`), box.file(`${name}.msg`)]);
  };
  const pid = agent.child.pid;

  // One client, one request at a time.
  const one = await AgentClient.connect(box.socket, { timeoutMs: 30_000 });
  t.teardown(() => one.close());
  await sign(one, Buffer.from('warm-up'), false);
  await new Promise((r) => setTimeout(r, 100)); // past the agent's memory of contention
  const before = runTimes(pid);
  const serial = [];
  for (let i = 0; i < 120; i++) {
    const msg = Buffer.from(`serial ${i}`);
    serial.push([msg, await sign(one, msg, i % 2 === 1)]);
  }
  const s = since(before, runTimes(pid));
  t.ok(
    serial.every(([m, sig], i) => crypto.verify('sha256', m, i % 2 ? { key: pub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } : pub, sig)),
    'all 120 serial signatures verify',
  );
  verifiesWithOpenssl(serial[0][0], serial[0][1], false, 'serial-pkcs1');
  verifiesWithOpenssl(serial[1][0], serial[1][1], true, 'serial-pss');
  t.ok(s.main > 2 * s.others, `one at a time, the main thread does the work (main ${s.main.toFixed(1)} ms, other threads ${s.others.toFixed(1)} ms)`);

  // Eight clients, four requests in flight each.
  const clients = await Promise.all(Array.from({ length: 8 }, () => AgentClient.connect(box.socket, { timeoutMs: 60_000 })));
  t.teardown(() => clients.forEach((c) => c.close()));
  const start = runTimes(pid);
  const results = [];
  let next = 0;
  await Promise.all(
    clients.flatMap((c) =>
      Array.from({ length: 4 }, async () => {
        for (let i = next++; i < 320; i = next++) {
          const msg = Buffer.from(`concurrent ${i}`);
          results.push([msg, await sign(c, msg, false)]);
        }
      }),
    ),
  );
  const c = since(start, runTimes(pid));
  t.equal(results.length, 320);
  t.ok(
    results.every(([m, sig]) => crypto.verify('sha256', m, pub, sig)),
    'all 320 concurrent signatures verify',
  );
  verifiesWithOpenssl(results[319][0], results[319][1], false, 'concurrent');
  t.ok(c.others > c.main / 2, `under load, the pool does most of the work (main ${c.main.toFixed(1)} ms, other threads ${c.others.toFixed(1)} ms)`);

  // Decryption takes the same two paths.
  const secret = Buffer.from('a session key');
  const ct = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, secret);
  const decrypt = (cl) =>
    cl
      .request(MsgType.DECRYPT, [
        { tag: Tag.URI, value: uri },
        { tag: Tag.ALGORITHM, value: 'rsa-oaep' },
        { tag: Tag.DIGEST, value: 'sha256' },
        { tag: Tag.DATA, value: ct },
      ])
      .then((f) => f.requireBytes(Tag.RESULT));
  t.same(await decrypt(one), secret, 'OAEP decryption, one at a time');
  const many = await Promise.all(clients.map(decrypt));
  t.ok(
    many.every((p) => p.equals(secret)),
    'OAEP decryption, eight at once',
  );
});
