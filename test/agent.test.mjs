// The agent as users and attackers meet it: a real `kmsbridge agent` process
// (or, where a backend must misbehave, an in-process Agent) on a real socket.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { sandbox, cli, cliOk, startAgent, canConnect, ROOT } from './lib/env.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { Agent } from '../dist/agent/server.js';
import { KeyService } from '../dist/keyservice.js';
import { parseConfig } from '../dist/config.js';
import { MsgType, Tag, encodeFrame, FrameReader } from '../dist/wire/codec.js';
import { hello, raw } from './lib/agent-raw.mjs';

const sha256 = (b) => crypto.createHash('sha256').update(b).digest();

async function signEc(client, uri, msg) {
  const f = await client.request(MsgType.SIGN, [
    { tag: Tag.URI, value: uri },
    { tag: Tag.ALGORITHM, value: 'ecdsa' },
    { tag: Tag.DIGEST, value: 'sha256' },
    { tag: Tag.DATA, value: sha256(msg) },
  ]);
  return f.requireBytes(Tag.RESULT);
}

t.test('32 concurrent clients with 40 requests each in flight all get correct signatures', async (t) => {
  const box = sandbox(t);
  await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const pub = crypto.createPublicKey(cliOk(t, box, ['keys', 'export', uri]));
  const clients = await Promise.all(Array.from({ length: 32 }, () => AgentClient.connect(box.socket)));
  t.teardown(() => clients.forEach((c) => c.close()));
  let verified = 0;
  await Promise.all(
    clients.map((c, i) =>
      Promise.all(
        Array.from({ length: 40 }, async (_, j) => {
          const msg = Buffer.from(`client ${i} request ${j}`);
          const sig = await signEc(c, uri, msg);
          if (crypto.verify('sha256', msg, pub, sig)) verified++;
        }),
      ),
    ),
  );
  t.equal(verified, 32 * 40, 'every signature verifies (node:crypto against the exported key)');
});

t.test('malformed, truncated and oversized frames close only their own connection', async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const good = await AgentClient.connect(box.socket);
  t.teardown(() => good.close());

  const hello = encodeFrame({ id: 1, type: MsgType.HELLO, status: 0, fields: [{ tag: Tag.VERSION, value: 1 }] });
  const attacks = {
    garbage: Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
    oversized: Buffer.from([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1]),
    'bad field after hello': Buffer.concat([hello, Buffer.from('0000001000000002001100000033000000030000ff', 'hex')]),
    'truncated then hang-up': hello.subarray(0, 9),
  };
  for (const [name, bytes] of Object.entries(attacks)) {
    const closed = await new Promise((resolve) => {
      const s = net.connect(box.socket, () => {
        s.write(bytes);
        if (name.startsWith('truncated')) s.end();
      });
      s.on('data', () => {});
      s.on('close', () => resolve(true));
      s.on('error', () => {});
      setTimeout(() => (s.destroy(), resolve(false)), 5000);
    });
    t.ok(closed, `${name}: the agent closed that connection`);
    t.ok(await signEc(good, uri, Buffer.from(name)), `${name}: the other connection still works`);
  }
  t.match(agent.log(), /closing connection from pid \d+ uid \d+/, 'the agent logged why');
});

t.test('HELLO is required first, and a protocol version the agent does not speak is refused by name', async (t) => {
  const box = sandbox(t);
  await startAgent(t, box);
  const ask = (frame) =>
    new Promise((resolve, reject) => {
      const s = net.connect(box.socket, () => s.write(encodeFrame(frame)));
      const r = new FrameReader();
      s.on('data', (d) => {
        const [f] = r.push(d);
        if (f) (s.destroy(), resolve(f));
      });
      s.on('error', reject);
    });
  const notHello = await ask({ id: 7, type: MsgType.PING, status: 0, fields: [] });
  t.equal(notHello.status, 6, 'BAD_REQUEST');
  t.match(notHello.fields[0].value, /first request on a connection must be HELLO/);
  const v2 = await ask({ id: 8, type: MsgType.HELLO, status: 0, fields: [{ tag: Tag.VERSION, value: 2 }] });
  t.equal(v2.status, 6);
  t.match(v2.fields[0].value, /protocol version 2 is not supported; this agent speaks version 1/);
  // The serving threads greet this peer (the agent's owner); a second HELLO still reaches the dispatcher.
  const c = await raw(box.socket);
  t.teardown(() => c.s.destroy());
  c.s.write(Buffer.concat([hello(1), hello(2)]));
  const replies = await c.until(2);
  t.same(
    [replies.get(1).status, replies.get(1).fields.map((f) => f.tag)],
    [0, [Tag.VERSION, Tag.PEER_NAME, Tag.MAX_FRAME]],
    'the first HELLO is answered with version, name and frame limit',
  );
  t.equal(replies.get(2).status, 6, 'a second one is a BAD_REQUEST');
  t.match(replies.get(2).fields[0].value, /HELLO was already exchanged/);
});

t.test('a backend call that hangs fails with the timeout error naming the keyring, and the agent keeps serving', async (t) => {
  const box = sandbox(t);
  const config = parseConfig(`[keyrings.slow]\ntype = "local"\ntimeout_ms = 300\n[keyrings.fast]\ntype = "local"\n`, 'test');
  const hanging = (cfg) => ({
    type: 'local',
    describe: async () => ({
      keyType: 'ec',
      bits: 256,
      curve: 'P-256',
      publicKey: Buffer.alloc(0),
      algorithms: ['ecdsa'],
      digests: ['sha256'],
      pssSalt: 'any',
    }),
    sign: (_id, _req, signal) =>
      cfg.name === 'slow' ? new Promise((_, rej) => signal.addEventListener('abort', () => rej(new Error('aborted')))) : Promise.resolve(Buffer.from('sig')),
    random: async (n) => Buffer.alloc(n),
    close: async () => {},
  });
  const ks = new KeyService(config, { local: hanging });
  const agent = await Agent.start({ socketPath: box.socket, keyService: ks });
  t.teardown(() => agent.stop());
  const c = await AgentClient.connect(box.socket);
  t.teardown(() => c.close());
  const started = Date.now();
  await t.rejects(signEc(c, 'kms:slow/k', Buffer.from('x')), {
    codeName: 'TIMEOUT',
    message: /keyring 'slow' \(local\) did not answer sign with kms:slow\/k within 300 ms/,
  });
  const took = Date.now() - started;
  t.ok(took >= 290 && took < 5000, `failed after ${took} ms`);
  t.same(await signEc(c, 'kms:fast/k', Buffer.from('y')), Buffer.from('sig'), 'the same connection serves the next request');
});

t.test('SIGTERM answers the requests in flight, removes the socket and exits 0', async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'rsa-3072']).trim();
  const c = await AgentClient.connect(box.socket);
  t.teardown(() => c.close());
  const inflight = Array.from({ length: 30 }, (_, i) =>
    c.request(MsgType.SIGN, [
      { tag: Tag.URI, value: uri },
      { tag: Tag.ALGORITHM, value: 'rsa-pkcs1' },
      { tag: Tag.DIGEST, value: 'sha256' },
      { tag: Tag.DATA, value: sha256(Buffer.from([i])) },
    ]),
  );
  await new Promise((r) => setTimeout(r, 5));
  agent.child.kill('SIGTERM');
  const results = await Promise.allSettled(inflight);
  const answered = results.filter((r) => r.status === 'fulfilled').length;
  t.ok(answered > 0, `${answered} of 30 in-flight requests answered before shutdown`);
  for (const r of results) if (r.status === 'rejected') t.match(r.reason.message, /closed the connection|shutting down/);
  const { code } = await agent.exited;
  t.equal(code, 0, 'clean exit');
  t.notOk(fs.existsSync(box.socket), 'socket removed');
});

t.test('a stale socket is replaced; a live agent is not', async (t) => {
  const box = sandbox(t);
  fs.mkdirSync(path.dirname(box.socket), { mode: 0o700 });
  const stale = net.createServer().listen(box.socket);
  await new Promise((r) => stale.once('listening', r));
  // keep the file but stop listening: what a crashed agent leaves behind
  await new Promise((r) => stale.close(r));
  fs.writeFileSync(box.file('marker'), '');
  if (!fs.existsSync(box.socket)) {
    // Node removes the file on close; recreate a dead socket file with a bound-but-closed socket
    spawnSync('python3', ['-c', `import socket; s=socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(box.socket)})`]);
  }
  t.ok(fs.lstatSync(box.socket).isSocket(), 'a dead socket file is present');
  await startAgent(t, box);
  t.ok(await canConnect(box.socket), 'the new agent replaced it');
  const second = cli(box, ['agent', '--foreground'], { timeout: 15_000 });
  t.equal(second.status, 1);
  t.match(second.stderr, /an agent is already listening on .*agent\.sock/);
  t.notMatch(second.stderr, /\n\s+at /, 'no stack trace');
});

t.test('the agent refuses a socket directory others can write to, or a store open to others', async (t) => {
  const box = sandbox(t);
  fs.mkdirSync(path.dirname(box.socket), { mode: 0o777 });
  fs.chmodSync(path.dirname(box.socket), 0o777);
  let r = cli(box, ['agent', '--foreground'], { timeout: 15_000 });
  t.equal(r.status, 1);
  t.match(r.stderr, /socket directory .* has mode 0777, writable by other users; run: chmod 700/);
  fs.chmodSync(path.dirname(box.socket), 0o700);
  const store = path.join(box.dir, 'keys-local');
  fs.mkdirSync(store, { mode: 0o755 });
  fs.chmodSync(store, 0o755);
  r = cli(box, ['agent', '--foreground'], { timeout: 15_000 });
  t.equal(r.status, 1);
  t.match(r.stderr, /key store of keyring 'local' .*keys-local has mode 0755, open to other users; run: chmod 700/);
});

t.test('every private-key operation leaves one JSON audit line without data', async (t) => {
  const box = sandbox(t);
  await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const c = await AgentClient.connect(box.socket);
  t.teardown(() => c.close());
  const digest = sha256(Buffer.from('audited'));
  await signEc(c, uri, Buffer.from('audited'));
  await t.rejects(signEc(c, 'kms:local/nope', Buffer.from('x')));
  await new Promise((r) => setTimeout(r, 100));
  const lines = fs
    .readFileSync(box.file('audit.log'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const signs = lines.filter((l) => l.op === 'sign');
  t.equal(signs.length, 2);
  t.match(signs[0], { uri, op: 'sign', alg: 'ecdsa', digest: 'sha256', outcome: 'ok', pid: process.pid, uid: process.getuid() });
  t.type(signs[0].ms, 'number');
  t.match(signs[1], { uri: 'kms:local/nope', outcome: 'NOT_FOUND' });
  const raw = fs.readFileSync(box.file('audit.log'));
  t.notOk(raw.includes(digest) || raw.includes(digest.toString('hex')) || raw.includes(digest.toString('base64')), 'no digest in the log');
});

// ---- peers of other uids (needs root to create a user and switch to it) -------------------------
const isRoot = process.getuid() === 0;
function ensureUser(name) {
  if (spawnSync('id', ['-u', name]).status !== 0) {
    const r = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name]);
    if (r.status !== 0) throw new Error(`useradd ${name}: ${r.stderr}`);
  }
  return Number(spawnSync('id', ['-u', name], { encoding: 'utf8' }).stdout.trim());
}

function ensureGroup(name) {
  if (spawnSync('getent', ['group', name]).status !== 0) {
    const r = spawnSync('groupadd', ['--system', name]);
    if (r.status !== 0) throw new Error(`groupadd ${name}: ${r.stderr}`);
  }
  return Number(spawnSync('getent', ['group', name], { encoding: 'utf8' }).stdout.split(':')[2]);
}

/** Runs a tiny client as another uid (with its own group, or |gid|); it prints the outcome of a SIGN as JSON. */
function signAs(uid, box, uri, gid = Number(spawnSync('id', ['-g', String(uid)], { encoding: 'utf8' }).stdout.trim())) {
  const script = `
    const { AgentClient } = await import(${JSON.stringify(path.join(ROOT, 'dist/agent/client.js'))});
    const { MsgType, Tag } = await import(${JSON.stringify(path.join(ROOT, 'dist/wire/codec.js'))});
    let c;
    try {
      c = await AgentClient.connect(${JSON.stringify(box.socket)}, { timeoutMs: 10000 });
      const f = await c.request(MsgType.SIGN, [{ tag: Tag.URI, value: ${JSON.stringify(uri)} }, { tag: Tag.ALGORITHM, value: 'ecdsa' }, { tag: Tag.DIGEST, value: 'sha256' }, { tag: Tag.DATA, value: Buffer.alloc(32, 1) }]);
      console.log(JSON.stringify({ ok: f.requireBytes(Tag.RESULT).length > 0 }));
    } catch (e) { console.log(JSON.stringify({ ok: false, code: e.codeName, message: e.message })); }
    finally { c?.close(); }`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { uid, gid, encoding: 'utf8', timeout: 20_000, cwd: '/' });
  if (r.error) throw r.error;
  return JSON.parse(r.stdout.trim() || JSON.stringify({ ok: false, message: r.stderr }));
}

t.test(
  'another uid cannot use the agent unless the config allows it, and then only its keyrings',
  { skip: isRoot ? false : 'needs root to create a second user' },
  async (t) => {
    const friend = ensureUser('kmsbridge-friend');
    const stranger = ensureUser('kmsbridge-stranger');
    const box = sandbox(t, { keyrings: { local: { type: 'local' }, shared: { type: 'local', allow_uids: [friend] } } });
    fs.chmodSync(box.dir, 0o711); // let other uids reach the socket directory
    await startAgent(t, box);
    t.equal(fs.statSync(box.socket).mode & 0o777, 0o666, 'socket opened to others because the config allows a uid');
    const shared = cliOk(t, box, ['keys', 'create', 'team', '--keyring', 'shared', '--type', 'ec-p256']).trim();
    const mine = cliOk(t, box, ['keys', 'create', 'mine', '--keyring', 'local', '--type', 'ec-p256']).trim();
    t.same(signAs(friend, box, shared), { ok: true }, 'the allowed uid signs with the shared keyring');
    t.match(signAs(friend, box, mine), { ok: false, code: 'ACCESS_DENIED', message: new RegExp(`uid ${friend} may not use keyring 'local'`) });
    t.match(signAs(stranger, box, shared), { ok: false, code: 'ACCESS_DENIED', message: new RegExp(`uid ${stranger} may not use this agent`) });
  },
);

t.test(
  'a keyring shared with a group: a signature approved for a peer in that group is not granted to its uid in another group',
  { skip: isRoot ? false : 'needs root to create a second user and a group' },
  async (t) => {
    const friend = ensureUser('kmsbridge-friend');
    const team = ensureGroup('kmsbridge-team');
    // The friend may connect by its uid (keyring 'mine'), and use 'shared' only while its gid is the team's.
    const box = sandbox(t, { keyrings: { mine: { type: 'local', allow_uids: [friend] }, shared: { type: 'local', allow_gids: [team] } } });
    fs.chmodSync(box.dir, 0o711);
    await startAgent(t, box);
    const shared = cliOk(t, box, ['keys', 'create', 'team', '--keyring', 'shared', '--type', 'ec-p256']).trim();
    t.same(signAs(friend, box, shared, team), { ok: true }, 'signs as a member of the group');
    await new Promise((r) => setTimeout(r, 300)); // the grant follows the approved signature
    t.same(signAs(friend, box, shared, team), { ok: true }, 'and again (the grant answers)');
    t.match(
      signAs(friend, box, shared),
      { ok: false, code: 'ACCESS_DENIED', message: new RegExp(`uid ${friend} may not use keyring 'shared'`) },
      'the same uid in its own group is refused, not served by the grant made for the group',
    );
  },
);

t.test(
  'with no uid allowed, the socket is 0600 and another uid cannot even connect',
  { skip: isRoot ? false : 'needs root to create a second user' },
  async (t) => {
    const stranger = ensureUser('kmsbridge-stranger');
    const box = sandbox(t);
    fs.chmodSync(box.dir, 0o711);
    await startAgent(t, box);
    t.equal(fs.statSync(box.socket).mode & 0o777, 0o600);
    t.equal(fs.statSync(path.dirname(box.socket)).mode & 0o777, 0o700);
    const r = signAs(stranger, box, 'kms:local/x');
    t.match(r, { ok: false, code: 'ACCESS_DENIED' });
  },
);
