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
import { spawnSync } from 'node:child_process';
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

t.test('the threads accept, tell JavaScript who connected, and greet a peer the policy admits; any other first frame goes to JavaScript', async (t) => {
  const addon = native();
  const reply = encodeFrame({
    id: 0,
    type: MsgType.HELLO | 0x8000,
    status: 0,
    fields: [
      { tag: Tag.VERSION, value: 1 },
      { tag: Tag.PEER_NAME, value: 'test-agent' },
    ],
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-greet-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  /** A server listening at |name| with |policy|; its events, in order. */
  const serve = (name, policy) => {
    const events = [];
    const server = addon.serveStart((id, frames, reason, peer) => events.push({ id, frames: frames && Buffer.from(frames), reason, peer }), {
      threads: 2,
      maxInFlight: 16,
      hello: reply,
      helloVersion: 1,
    });
    t.teardown(() => addon.serveStop(server));
    addon.serveListen(server, path.join(dir, name), policy);
    return { server, events, socket: path.join(dir, name) };
  };
  const me = { ownUid: process.getuid(), uids: [], gids: [] };
  const admits = serve('admits', me);
  const nobody = serve('nobody', { ownUid: process.getuid() + 1, uids: [process.getuid() + 2], gids: [process.getgid() + 1] });
  /** Connects, writes |frames|, collects replies for |ms|. */
  const session = async (srv, frames, ms = 300) => {
    const c = net.connect(srv.socket);
    const reader = new FrameReader();
    const replies = [];
    c.on('data', (d) => replies.push(...reader.push(d)));
    await new Promise((r) => c.once('connect', r));
    const before = srv.events.length;
    c.write(Buffer.concat(frames));
    await new Promise((r) => setTimeout(r, ms));
    const opened = srv.events.findLast((e) => e.peer);
    const greeted = addon.serveIsGreeted(srv.server, opened.id);
    c.destroy();
    return { opened, greeted, replies, frames: srv.events.slice(before).filter((e) => e.id === opened.id && e.frames) };
  };

  const good = await session(admits, [hello(41), ping(42)]);
  t.same(good.opened.peer, { pid: process.pid, uid: process.getuid(), gid: process.getgid() }, 'JavaScript is told who connected (SO_PEERCRED)');
  t.same(
    good.replies.map((f) => [f.id, f.type, f.status]),
    [
      [41, MsgType.HELLO | 0x8000, 0],
      [42, MsgType.PING | 0x8000, 0],
    ],
    'the owner: its HELLO answered with its id, then its PING, both by the threads',
  );
  t.same(good.replies[0].fields, decodeFrame(reply).fields, "the reply's fields are the agent's own");
  t.same(good.frames, [], 'JavaScript saw none of its frames');
  t.equal(good.greeted, true, 'and the connection is greeted');

  const stranger = await session(nobody, [hello(43)]);
  t.same(stranger.replies, [], 'a peer the policy does not admit: no answer from the threads');
  t.equal(stranger.frames.length, 1, 'its HELLO went to JavaScript');
  t.equal(decodeFrame(stranger.frames[0].frames).id, 43, 'the HELLO itself');
  t.equal(stranger.greeted, false, 'and the connection is not greeted');

  const v2 = await session(admits, [encodeFrame({ id: 44, type: MsgType.HELLO, status: 0, fields: [{ tag: Tag.VERSION, value: 2 }] })]);
  t.same(v2.replies, [], 'another protocol version: not answered by the threads');
  t.equal(v2.frames.length, 1, 'it went to JavaScript (which refuses it by name)');
  t.equal(v2.greeted, false, 'nor greeted');

  const twice = await session(admits, [hello(45), hello(46)]);
  t.same(
    twice.replies.map((f) => f.id),
    [45],
    'a second HELLO is not greeted again by the threads',
  );
  t.equal(decodeFrame(twice.frames[0].frames).id, 46, 'JavaScript answers it (already exchanged)');

  addon.serveUnlisten(admits.server);
  await t.rejects(
    new Promise((resolve, reject) => net.connect(admits.socket).once('connect', resolve).once('error', reject)),
    { code: 'ECONNREFUSED' },
    'after serveUnlisten nobody is accepted',
  );
  t.throws(() => addon.serveListen(nobody.server, path.join(dir, 'again'), me), /already listening/, 'one listening socket per server');
  t.throws(() => addon.serveListen(admits.server, path.join(dir, 'admits'), me), { code: 'EADDRINUSE' }, 'a path in use is refused by its errno');
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

t.test('out of file descriptors, the agent pauses accepting instead of spinning, and serves again once some are free', async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const pid = agent.child.pid;
  const open = fs.readdirSync(`/proc/${pid}/fd`).length;
  const limit = open + 8;
  const r = spawnSync('prlimit', ['--pid', String(pid), `--nofile=${limit}:${limit}`]);
  t.equal(r.status, 0, `the agent's descriptors limited to ${limit} (${open} in use)`);
  const cpuMs = () => {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
  };
  // More clients than the limit leaves room for: the rest wait in the listen backlog, unaccepted.
  const clients = [];
  for (let i = 0; i < 12; i++) clients.push(await raw(box.socket));
  for (const [i, c] of clients.entries()) c.s.write(Buffer.concat([hello(1), ping(2 + i)]));
  await new Promise((r) => setTimeout(r, 300));
  const served = () => clients.filter((c) => c.replies.has(1)).length;
  const before = served();
  t.ok(before > 0 && before < clients.length, `some clients served (${before}), the others wait: the agent is out of descriptors`);
  const cpu0 = cpuMs();
  await new Promise((r) => setTimeout(r, 1000));
  const spent = cpuMs() - cpu0;
  t.ok(spent < 300, `the agent used ${spent} ms of CPU in that second (a thread spinning on the ready socket would use about 1000)`);
  // Free descriptors: the waiting clients are accepted and answered.
  for (const c of clients.slice(0, before)) c.s.destroy();
  const waiting = clients.slice(before);
  await Promise.all(waiting.map((c) => c.until(2, 10_000)));
  t.ok(
    waiting.every((c, i) => c.replies.get(1).status === 0 && c.replies.get(2 + before + i)?.status === 0),
    `the ${waiting.length} waiting clients are greeted and answered`,
  );
  for (const c of waiting) c.s.destroy();
  t.equal(agent.child.exitCode, null, 'the agent is still running');
});

t.test('a description is given again by the threads to the peer that asked, until the key is deleted, made anew or its file replaced', async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'desc', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const pub = (f) => f.fields.find((x) => x.tag === Tag.PUBLIC_KEY)?.value;
  const c = await raw(box.socket);
  t.teardown(() => c.s.destroy());
  c.s.write(hello(1));
  await c.until(1);
  let next = 2;
  const ask = async () => {
    const id = next++;
    c.s.write(describe(id, uri));
    await c.until(id);
    return c.replies.get(id);
  };
  const first = await ask();
  t.equal(first.status, 0, 'described by the KeyService');
  const keyFile = path.join(box.dir, 'keys-local', 'desc.key');
  fs.copyFileSync(keyFile, box.file('desc.key.backup'));
  await new Promise((r) => setTimeout(r, 100)); // the grant follows the answer
  // The agent's main thread (JavaScript) runs for each request it answers: 300 of them would cost it 15 ms or more.
  const mainNs = () => Number(fs.readFileSync(`/proc/${agent.child.pid}/task/${agent.child.pid}/schedstat`, 'utf8').split(' ')[0]);
  const before = mainNs();
  const again = [];
  for (let i = 0; i < 300; i++) again.push(await ask());
  const mainMs = (mainNs() - before) / 1e6;
  t.ok(
    again.every((f) => f.status === 0 && pub(f).equals(pub(first))),
    '300 more: the same description',
  );
  t.ok(mainMs < 5, `given by the serving threads: the main thread ran ${mainMs.toFixed(1)} ms meanwhile`);
  const audited = fs
    .readFileSync(box.file('audit.log'), 'utf8')
    .split('\n')
    .filter((l) => l.includes('"op":"describe"') && l.includes(`"uri":"${uri}"`));
  t.equal(audited.length, 301, 'each one audited once');
  t.match(JSON.parse(audited.at(-1)), { pid: process.pid, uid: process.getuid(), op: 'describe', outcome: 'ok' }, 'naming the peer, as the KeyService does');

  cliOk(t, box, ['keys', 'delete', uri]);
  const gone = await ask();
  t.equal(gone.status, 1, 'after a delete through the agent: NOT_FOUND, from the KeyService');
  cliOk(t, box, ['keys', 'create', 'desc', '--keyring', 'local', '--type', 'ec-p256']);
  const anew = await ask();
  await new Promise((r) => setTimeout(r, 100));
  const anewAgain = await ask();
  t.ok(pub(anewAgain).equals(pub(anew)), 'made anew: described the same, then and after');
  t.notOk(pub(anew).equals(pub(first)), 'not as the old one');
  // That description is the key's that signs: openssl checks a signature it makes against it.
  const verifies = async (description, what) => {
    const id = next++;
    c.s.write(signFrame(id, uri, what));
    await c.until(id);
    fs.writeFileSync(box.file('desc.der'), pub(description));
    fs.writeFileSync(box.file('desc.sig'), c.replies.get(id).fields.find((x) => x.tag === Tag.RESULT).value);
    fs.writeFileSync(box.file('desc.msg'), what);
    const args = ['dgst', '-sha256', '-verify', box.file('desc.der'), '-keyform', 'DER', '-signature', box.file('desc.sig'), box.file('desc.msg')];
    return opensslOk(t, args);
  };
  t.match(await verifies(anewAgain, 'made anew'), /Verified OK/, 'openssl verifies a signature of the new key with it');

  // The old key's file restored from a backup behind the agent's back (as an operator would, with cp): the threads no
  // longer give the new key's description, and the KeyService reads the restored key.
  fs.copyFileSync(box.file('desc.key.backup'), keyFile);
  const restored = await ask();
  await new Promise((r) => setTimeout(r, 100));
  const restoredAgain = await ask();
  t.ok(pub(restored).equals(pub(first)) && pub(restoredAgain).equals(pub(first)), 'restored: described as the old key, then and after');
  t.match(await verifies(restoredAgain, 'restored'), /Verified OK/, 'openssl verifies a signature of the restored key with it');
});
