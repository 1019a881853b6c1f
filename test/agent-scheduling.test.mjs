// Who does an RSA operation in the agent, read from /proc (run time of each
// thread: the main thread, the serving threads named kmsbridge-serve, and
// the others, libuv's pool). A signature a grant covers is made by a serving
// thread (src-native/node/serve.c), whatever the load. What the KeyService
// runs itself (here: decryption, never granted) runs on the event loop while
// one client asks at a time (cheaper by the pool's two thread hand-offs) and
// on libuv's pool when requests wait (so one agent uses every core). Every
// signature and plaintext is checked by the system openssl or node:crypto.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { sandbox, cliOk, startAgent, opensslOk } from './lib/env.mjs';
import { formatRunTimes, runTimes, since } from './lib/proc.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

/** Runs op(client, i) for i = 0..n-1 with four calls in flight on each client; returns the results in order. */
async function fanOut(clients, n, op) {
  const results = new Array(n);
  let next = 0;
  await Promise.all(
    clients.flatMap((c) =>
      Array.from({ length: 4 }, async () => {
        for (let i = next++; i < n; i = next++) results[i] = await op(c, i);
      }),
    ),
  );
  return results;
}

const fmt = formatRunTimes;

t.test(
  'RSA through the agent: granted signatures on the serving threads; decryption on the event loop one at a time, on the pool under load; right in all',
  async (t) => {
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
      serial.every(([m, sig], i) =>
        crypto.verify('sha256', m, i % 2 ? { key: pub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } : pub, sig),
      ),
      'all 120 serial signatures verify',
    );
    verifiesWithOpenssl(serial[0][0], serial[0][1], false, 'serial-pkcs1');
    verifiesWithOpenssl(serial[1][0], serial[1][1], true, 'serial-pss');
    // 120 RSA-2048 signatures are 30+ ms of work; two of them (one per padding) went through the KeyService.
    t.ok(s.serving > 3 * s.main && s.serving > 3 * s.others, `one at a time, the serving threads make the signatures (${fmt(s)})`);

    // Eight clients, four requests in flight each.
    const clients = await Promise.all(Array.from({ length: 8 }, () => AgentClient.connect(box.socket, { timeoutMs: 60_000 })));
    t.teardown(() => clients.forEach((c) => c.close()));
    const start = runTimes(pid);
    const results = await fanOut(clients, 320, async (cl, i) => {
      const msg = Buffer.from(`concurrent ${i}`);
      return [msg, await sign(cl, msg, false)];
    });
    const c = since(start, runTimes(pid));
    t.equal(results.length, 320);
    t.ok(
      results.every(([m, sig]) => crypto.verify('sha256', m, pub, sig)),
      'all 320 concurrent signatures verify',
    );
    verifiesWithOpenssl(results[319][0], results[319][1], false, 'concurrent');
    t.ok(c.serving > 3 * c.main && c.serving > 3 * c.others, `under load too (${fmt(c)})`);

    // Decryption: the KeyService's own schedule.
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
    t.same(await decrypt(one), secret, 'OAEP decryption, warm-up');
    await new Promise((r) => setTimeout(r, 100)); // past the agent's memory of contention
    const d0 = runTimes(pid);
    for (let i = 0; i < 60; i++) t.same(await decrypt(one), secret, `serial decryption ${i}`, { diagnostic: false });
    const d = since(d0, runTimes(pid));
    t.ok(d.main > 2 * d.others, `decryption one at a time: on the event loop (${fmt(d)})`);
    const d1 = runTimes(pid);
    const many = await fanOut(clients, 320, (cl) => decrypt(cl));
    const dc = since(d1, runTimes(pid));
    t.ok(many.length === 320 && many.every((p) => p.equals(secret)), 'OAEP decryption, 320 from eight clients at once');
    t.ok(dc.others > dc.main / 2, `decryption under load: the pool does most of it (${fmt(dc)})`);
  },
);
