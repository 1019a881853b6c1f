// The agent's serving threads (src-native/node/serve.c) against peers that
// stress the framing: many requests in one write (answered by the threads,
// granted signatures among them, and by JavaScript, in any order, matched by
// id), a frame in one-byte writes, a peer that never reads its replies (held
// back alone, without growing the agent), peers that vanish with requests in
// flight, and hundreds of connections coming and going. Signatures are
// checked by node:crypto and the system openssl.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { sandbox, cliOk, startAgent, opensslOk } from './lib/env.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { native } from '../dist/native.js';
import { FrameReader, MsgType, Tag, decodeFrame, encodeFrame } from '../dist/wire/codec.js';
import { describe, hello, ping, raw, signFrame } from './lib/agent-raw.mjs';

async function world(t) {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'serve', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const pub = cliOk(t, box, ['keys', 'export', uri]);
  // One signature through the KeyService first: the ones after it are granted.
  const c = await AgentClient.connect(box.socket);
  await c.request(MsgType.SIGN, [
    { tag: Tag.URI, value: uri },
    { tag: Tag.ALGORITHM, value: 'ecdsa' },
    { tag: Tag.DIGEST, value: 'sha256' },
    { tag: Tag.DATA, value: Buffer.alloc(32, 1) },
  ]);
  c.close();
  await new Promise((r) => setTimeout(r, 100)); // the grant follows the answer
  return { box, agent, uri, pub };
}

t.test("the threads greet a peer approved at adoption with the agent's reply; any other first frame goes to JavaScript", async (t) => {
  const addon = native();
  const events = [];
  const reply = encodeFrame({
    id: 0,
    type: MsgType.HELLO | 0x8000,
    status: 0,
    fields: [
      { tag: Tag.VERSION, value: 1 },
      { tag: Tag.PEER_NAME, value: 'test-agent' },
    ],
  });
  const server = addon.serveStart((id, frames) => frames && events.push({ id, frames: Buffer.from(frames) }), {
    threads: 2,
    maxInFlight: 16,
    hello: reply,
    helloVersion: 1,
  });
  t.teardown(() => addon.serveStop(server));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-greet-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const approve = [];
  const adopted = [];
  const listener = net.createServer({ pauseOnConnect: true }, (s) => {
    adopted.push(addon.serveAdopt(server, s._handle.fd, process.pid, process.getuid(), process.getgid(), approve.shift()));
    s.destroy();
  });
  await new Promise((r) => listener.listen(path.join(dir, 's'), r));
  t.teardown(() => listener.close());
  /** Connects (adopted with |mayGreet|), writes |frames|, collects replies for |ms|. */
  const session = async (mayGreet, frames, ms = 300) => {
    approve.push(mayGreet);
    const c = net.connect(path.join(dir, 's'));
    const reader = new FrameReader();
    const replies = [];
    c.on('data', (d) => replies.push(...reader.push(d)));
    await new Promise((r) => c.once('connect', r));
    c.write(Buffer.concat(frames));
    await new Promise((r) => setTimeout(r, ms));
    const greeted = addon.serveIsGreeted(server, adopted.at(-1));
    c.destroy();
    return { greeted, replies, events: events.filter((e) => e.id === adopted.at(-1)) };
  };

  const good = await session(true, [hello(41), ping(42)]);
  t.same(
    good.replies.map((f) => [f.id, f.type, f.status]),
    [
      [41, MsgType.HELLO | 0x8000, 0],
      [42, MsgType.PING | 0x8000, 0],
    ],
    'an approved peer: its HELLO answered with its id, then its PING, both by the threads',
  );
  t.same(good.replies[0].fields, decodeFrame(reply).fields, "the reply's fields are the agent's own");
  t.same(good.events, [], 'JavaScript saw nothing of it');
  t.equal(good.greeted, true, 'and the connection is greeted');

  const stranger = await session(false, [hello(43)]);
  t.same(stranger.replies, [], 'a peer not approved: no answer from the threads');
  t.equal(stranger.events.length, 1, 'its HELLO went to JavaScript');
  t.equal(decodeFrame(stranger.events[0].frames).id, 43, 'the HELLO itself');
  t.equal(stranger.greeted, false, 'and the connection is not greeted');

  const v2 = await session(true, [encodeFrame({ id: 44, type: MsgType.HELLO, status: 0, fields: [{ tag: Tag.VERSION, value: 2 }] })]);
  t.same(v2.replies, [], 'another protocol version: not answered by the threads');
  t.equal(v2.events.length, 1, 'it went to JavaScript (which refuses it by name)');
  t.equal(v2.greeted, false);

  const twice = await session(true, [hello(45), hello(46)]);
  t.same(
    twice.replies.map((f) => f.id),
    [45],
    'a second HELLO is not greeted again by the threads',
  );
  t.equal(decodeFrame(twice.events[0].frames).id, 46, 'JavaScript answers it (already exchanged)');
});

const rssKb = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

t.test('3,000 requests in one write: pings, granted signatures and descriptions, every reply by its id', async (t) => {
  const { box, uri, pub } = await world(t);
  const c = await raw(box.socket);
  t.teardown(() => c.s.destroy());
  const frames = [hello(1)];
  for (let id = 2; id < 3002; id++) frames.push(id % 3 === 0 ? ping(id) : id % 3 === 1 ? signFrame(id, uri, `m${id}`) : describe(id, uri));
  c.s.write(Buffer.concat(frames));
  const replies = await c.until(3001);
  const bad = [...replies.values()].filter((f) => f.status !== 0);
  t.equal(bad.length, 0, 'every request succeeded');
  let verified = 0;
  for (let id = 2; id < 3002; id++) {
    const f = replies.get(id);
    t.equal(f.type, (id % 3 === 0 ? MsgType.PING : id % 3 === 1 ? MsgType.SIGN : MsgType.DESCRIBE) | 0x8000, `reply ${id} answers its request`, {
      diagnostic: false,
    });
    if (id % 3 === 1) {
      const sig = f.fields.find((x) => x.tag === Tag.RESULT).value;
      if (crypto.verify('sha256', Buffer.from(`m${id}`), pub, sig)) verified++;
    }
  }
  t.equal(verified, 1000, 'all 1,000 signatures verify');
  const last = replies.get(3001).fields.find((x) => x.tag === Tag.RESULT).value;
  fs.writeFileSync(box.file('p.pub'), pub);
  fs.writeFileSync(box.file('m.msg'), 'm3001');
  fs.writeFileSync(box.file('m.sig'), last);
  opensslOk(t, ['dgst', '-sha256', '-verify', box.file('p.pub'), '-signature', box.file('m.sig'), box.file('m.msg')]);
});

t.test('a frame written one byte at a time is answered', async (t) => {
  const { box, uri, pub } = await world(t);
  const c = await raw(box.socket);
  t.teardown(() => c.s.destroy());
  const bytes = Buffer.concat([hello(1), signFrame(2, uri, 'slowly'), ping(3)]);
  for (const b of bytes) {
    c.s.write(Buffer.from([b]));
    await new Promise((r) => setImmediate(r));
  }
  const replies = await c.until(3);
  t.ok(crypto.verify('sha256', Buffer.from('slowly'), pub, replies.get(2).fields[0].value), 'the signature verifies');
  t.equal(replies.get(3).type, MsgType.PING | 0x8000);
});

t.test('a peer that never reads is held back alone, and the agent does not grow with it', async (t) => {
  const { box, agent, uri } = await world(t);
  const pid = agent.child.pid;
  const greedy = await raw(box.socket);
  t.teardown(() => greedy.s.destroy());
  greedy.s.pause(); // reads nothing from here on
  greedy.s.write(hello(1));
  const rss0 = rssKb(pid);
  // 40,000 signatures asked for, about 100 bytes of reply each: 4 MB, more than the socket and the agent's queue hold.
  const batch = [];
  for (let id = 2; id < 40_002; id++) batch.push(signFrame(id, uri, `g${id}`));
  const all = Buffer.concat(batch);
  greedy.s.write(all);
  await new Promise((r) => setTimeout(r, 1500));
  const other = await AgentClient.connect(box.socket, { timeoutMs: 5000 });
  t.teardown(() => other.close());
  const started = Date.now();
  await other.request(MsgType.PING, []);
  t.ok(Date.now() - started < 5000, 'another client is answered at once');
  const audited = fs.readFileSync(box.file('audit.log'), 'utf8').trim().split('\n').length;
  t.ok(audited < 40_000, `the agent stopped signing for the peer that does not read (${audited} audit lines)`);
  const grown = rssKb(pid) - rss0;
  t.ok(grown < 64 * 1024, `the agent grew by ${grown} kB, not by what the peer asked for`);
  // Once the peer reads, it gets every reply.
  greedy.s.resume();
  const replies = await greedy.until(40_001, 120_000);
  t.equal([...replies.values()].filter((f) => f.status === 0).length, 40_001, 'all 40,000 answered once it reads');
});

t.test('peers that vanish mid-frame or with requests in flight leave the agent serving', async (t) => {
  const { box, agent, uri } = await world(t);
  for (let i = 0; i < 20; i++) {
    const c = await raw(box.socket);
    const frames = [hello(1)];
    for (let id = 2; id < 200; id++) frames.push(i % 2 ? describe(id, uri) : signFrame(id, uri, `v${id}`));
    const bytes = Buffer.concat(frames);
    c.s.write(i % 4 < 2 ? bytes : bytes.subarray(0, bytes.length - 7)); // some end mid-frame
    c.s.destroy();
  }
  const after = await AgentClient.connect(box.socket, { timeoutMs: 5000 });
  t.teardown(() => after.close());
  const f = await after.request(MsgType.DESCRIBE, [{ tag: Tag.URI, value: uri }]);
  t.ok(f, 'a new client is served');
  t.equal(agent.child.exitCode, null, 'the agent is running');
  t.notMatch(agent.log(), /closed connection from/, 'no connection was closed for a fault of the agent');
});

t.test('600 connections coming and going, 100 open at once: each gets its own replies', async (t) => {
  const { box, uri, pub } = await world(t);
  let ok = 0;
  for (let round = 0; round < 6; round++) {
    const clients = await Promise.all(Array.from({ length: 100 }, () => raw(box.socket)));
    clients.forEach((c, i) => c.s.write(Buffer.concat([hello(1), signFrame(2, uri, `r${round}c${i}`), ping(3)])));
    await Promise.all(clients.map((c) => c.until(3)));
    clients.forEach((c, i) => {
      if (crypto.verify('sha256', Buffer.from(`r${round}c${i}`), pub, c.replies.get(2).fields[0].value)) ok++;
      c.s.destroy();
    });
  }
  t.equal(ok, 600, 'every connection got the signature over its own message');
});
