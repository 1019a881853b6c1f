// Grants for keys on a PKCS#11 token (src-native/node/pkcs11_sign.c): after
// the KeyService has approved and made a peer's signature on SoftHSM2, the
// agent's serving threads make the same signature on the token themselves,
// without JavaScript (read from /proc: the main thread stays idle). Every
// signature (ECDSA, RSA PKCS#1 and PSS over a digest, Ed25519 over messages
// of any length) is checked against the public key pkcs11-tool reads off the token,
// by node:crypto and, for one of each kind, by the system openssl. A key
// deleted through kmsbridge or behind its back, and a closing agent, end the
// grants: nothing is signed with a key that is gone. A busy token's overflow
// waits for a place inside the module rather than going to JavaScript. A
// token that hangs (SoftHSM2 blocked on its own file lock, held by another
// process) costs the agent neither PING, nor new connections, nor local keys.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { sandbox, cli, cliOk, startAgent, opensslOk } from './lib/env.mjs';
import { formatRunTimes, runTimes, since } from './lib/proc.mjs';
import { MODULES, ROOT } from './provider-harness.mjs';
import { SOFTHSM_LIB, addToken, makeToken, p11Selector, p11toolOk, readPublicKeyPem } from './lib/softhsm.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { native } from '../dist/native.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

const STRESS = path.join(ROOT, 'build', 'native-tests', 'provider_stress');
const token = makeToken(t, { label: 'kmsbridge-grants' });
const keyrings = { hsm: { type: 'pkcs11', library: SOFTHSM_LIB, token_label: token.label, pin_env: 'KMSBRIDGE_TEST_HSM_PIN', max_sessions: 4 } };
const env = { ...token.env, KMSBRIDGE_TEST_HSM_PIN: token.pin };

async function world(t, more = {}) {
  const box = sandbox(t, { keyrings: { ...keyrings, ...more } });
  box.env = { ...box.env, ...env };
  const agent = await startAgent(t, box);
  const client = await AgentClient.connect(box.socket, { timeoutMs: 30_000 });
  t.teardown(() => client.close());
  const create = (name, spec) => {
    const uri = cliOk(t, box, ['keys', 'create', name, '--keyring', 'hsm', '--type', spec]).trim();
    const pubFile = box.file(`${name}.pub.pem`);
    readPublicKeyPem(t, token, uri, pubFile);
    return { uri, pubFile, pub: crypto.createPublicKey(fs.readFileSync(pubFile)) };
  };
  const audited = () =>
    fs
      .readFileSync(box.file('audit.log'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => r.op === 'sign' && r.outcome === 'ok');
  return { box, agent, client, create, audited };
}

/** The grant follows the KeyService's answer: time for it to be made. */
const grantMade = () => new Promise((r) => setTimeout(r, 150));

const KINDS = {
  ecdsa: { fields: [{ tag: Tag.ALGORITHM, value: 'ecdsa' }], verify: {} },
  'rsa-pkcs1': { fields: [{ tag: Tag.ALGORITHM, value: 'rsa-pkcs1' }], verify: { padding: crypto.constants.RSA_PKCS1_PADDING } },
  'rsa-pss': {
    fields: [
      { tag: Tag.ALGORITHM, value: 'rsa-pss' },
      { tag: Tag.SALT_LENGTH, value: 32 },
    ],
    verify: { padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
  },
  // CKM_EDDSA over the message itself: no digest
  ed25519: { fields: [{ tag: Tag.ALGORITHM, value: 'ed25519' }], verify: {}, pure: true },
};

function signer(client, uri, kind) {
  const data = KINDS[kind].pure
    ? (msg) => [{ tag: Tag.DATA, value: Buffer.from(msg) }]
    : (msg) => [
        { tag: Tag.DIGEST, value: 'sha256' },
        { tag: Tag.DATA, value: crypto.createHash('sha256').update(msg).digest() },
      ];
  return (msg) => client.request(MsgType.SIGN, [{ tag: Tag.URI, value: uri }, ...KINDS[kind].fields, ...data(msg)]).then((f) => f.requireBytes(Tag.RESULT));
}

// Messages of several lengths (Ed25519 signs the message, up to 3,000 bytes here).
const message = (kind, i) => `${kind} ${i} `.repeat(1 + ((i * 37) % 300));

function verifies(key, kind, msg, sig) {
  return crypto.verify(KINDS[kind].pure ? null : 'sha256', Buffer.from(msg), { key: key.pub, ...KINDS[kind].verify }, sig);
}

t.test('repeated signatures are made by the serving threads on the token, verify, and are audited once each', async (t) => {
  const w = await world(t);
  const ec = w.create('grant-ec', 'ec-p256');
  const rsa = w.create('grant-rsa', 'rsa-2048');
  const ed = w.create('grant-ed', 'ed25519');
  const pid = w.agent.child.pid;
  for (const [key, kind, n] of [
    [ec, 'ecdsa', 200],
    [rsa, 'rsa-pkcs1', 60],
    [rsa, 'rsa-pss', 60],
    [ed, 'ed25519', 100],
  ]) {
    const sign = signer(w.client, key.uri, kind);
    const auditedBefore = w.audited().length;
    await sign('first'); // approved and made by the KeyService, which then grants it
    await grantMade();
    const before = runTimes(pid);
    const sigs = [];
    for (let i = 0; i < n; i++) sigs.push(await sign(message(kind, i)));
    const ran = since(before, runTimes(pid));
    t.ok(
      sigs.every((s, i) => verifies(key, kind, message(kind, i), s)),
      `${kind}: ${n} signatures verify with the public key read by pkcs11-tool`,
    );
    const last = { msg: w.box.file(`${kind}.msg`), sig: w.box.file(`${kind}.sig`) };
    fs.writeFileSync(last.msg, message(kind, n - 1));
    fs.writeFileSync(last.sig, sigs[n - 1]);
    const pss = kind === 'rsa-pss' ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : [];
    if (KINDS[kind].pure) opensslOk(t, ['pkeyutl', '-verify', '-pubin', '-inkey', key.pubFile, '-rawin', '-in', last.msg, '-sigfile', last.sig]);
    else opensslOk(t, ['dgst', '-sha256', ...pss, '-verify', key.pubFile, '-signature', last.sig, last.msg]);
    t.ok(ran.main < ran.serving / 2, `${kind}: the serving threads did the work, not JavaScript (${formatRunTimes(ran)})`);
    const lines = w.audited().slice(auditedBefore);
    t.equal(lines.length, n + 1, `${kind}: one audit line each`);
    t.ok(
      lines.every((r) => r.pid === process.pid && r.uid === process.getuid() && r.uri === key.uri && r.alg === kind),
      `${kind}: naming this process as the peer`,
    );
  }
});

t.test('a key deleted through kmsbridge or behind its back is not used by a grant; a new key of the same label is, and is described', async (t) => {
  const w = await world(t);
  const first = w.create('doomed', 'ec-p256');
  const sign = signer(w.client, first.uri, 'ecdsa');
  await sign('warm up');
  await grantMade();
  t.ok(crypto.verify('sha256', Buffer.from('granted'), first.pub, await sign('granted')), 'granted signature verifies');

  cliOk(t, w.box, ['keys', 'delete', first.uri], { env });
  await t.rejects(sign('after delete'), { codeName: 'NOT_FOUND' }, 'deleted through the agent: refused');

  const second = w.create('doomed', 'ec-p256');
  const s = await sign('after replace');
  t.ok(crypto.verify('sha256', Buffer.from('after replace'), second.pub, s), 'replaced: the new key signs');
  t.notOk(crypto.verify('sha256', Buffer.from('after replace'), first.pub, s), 'not the old one');
  await grantMade();
  await sign('granted again');

  const describe = () => w.client.request(MsgType.DESCRIBE, [{ tag: Tag.URI, value: second.uri }]).then((f) => f.requireBytes(Tag.PUBLIC_KEY));
  const spki = (k) => k.export({ type: 'spki', format: 'der' });
  t.ok((await describe()).equals(spki(second.pub)), 'described as the key it is');
  await grantMade();

  // pkcs11-tool, another process, deletes the private key: the grant's handle names nothing now.
  p11toolOk(t, token, ['--delete-object', '--type', 'privkey', ...p11Selector(second.uri)]);
  await t.rejects(sign('after the token lost it'), { codeName: 'NOT_FOUND' }, 'deleted on the token: refused, not signed');
  await t.rejects(describe(), { codeName: 'NOT_FOUND' }, 'nor described from what was known of it');

  // And makes a new key pair under the same label: described as that one (what a CSR or certificate is made from), and it signs.
  p11toolOk(t, token, ['--delete-object', '--type', 'pubkey', ...p11Selector(second.uri)]);
  p11toolOk(t, token, ['--keypairgen', '--key-type', 'EC:prime256v1', '--label', 'doomed', '--id', 'd00d']);
  const thirdPub = w.box.file('doomed-3.pub.pem');
  readPublicKeyPem(t, token, second.uri, thirdPub);
  const third = crypto.createPublicKey(fs.readFileSync(thirdPub));
  t.ok((await describe()).equals(spki(third)), 'made anew by pkcs11-tool: described as the new key');
  await grantMade();
  t.ok((await describe()).equals(spki(third)), 'and again');
  fs.writeFileSync(w.box.file('doomed-3.msg'), 'made anew behind its back');
  fs.writeFileSync(w.box.file('doomed-3.sig'), await sign('made anew behind its back'));
  t.match(
    opensslOk(t, ['dgst', '-sha256', '-verify', thirdPub, '-signature', w.box.file('doomed-3.sig'), w.box.file('doomed-3.msg')]),
    /Verified OK/,
    'openssl verifies its signature with the key pkcs11-tool read',
  );
});

t.test('the agent ends cleanly with grants in place (it waits for no thread inside the module)', async (t) => {
  const w = await world(t);
  const key = w.create('closing', 'ec-p256');
  const sign = signer(w.client, key.uri, 'ecdsa');
  await sign('warm up');
  await grantMade();
  const load = Array.from({ length: 64 }, (_, i) =>
    sign(`in flight ${i}`).then(
      (s) => crypto.verify('sha256', Buffer.from(`in flight ${i}`), key.pub, s),
      () => 'refused',
    ),
  );
  w.agent.child.kill('SIGTERM');
  const results = await Promise.all(load);
  t.ok(
    results.every((r) => r === true || r === 'refused'),
    'every answer is a valid signature or an error, never a bad signature',
  );
  t.same(await w.agent.exited, { code: 0, signal: null }, 'the agent exits 0');
});

t.test('the grant table takes PKCS#11 grants only for an agent peer, on a module this process loaded', async (t) => {
  const addon = native();
  const base = { uri: 'kms:hsm/label=x', keyring: 'hsm', algorithm: 'ecdsa', digest: 'sha256', dataLength: 32, auditFd: -1 };
  t.throws(
    () => addon.grantSign({ ...base, pkcs11: { module: SOFTHSM_LIB, slot: 0, object: 1, maxInside: 1 } }),
    { code: 'ERR_INVALID_ARG', message: /one agent peer/ },
    'no uid: refused (in-process callers never sign on a token from their own threads)',
  );
  t.throws(
    () => addon.grantSign({ ...base, uid: 1000, gid: 1000, pkcs11: { module: SOFTHSM_LIB, slot: 0, object: 1, maxInside: 1 } }),
    { code: 'ERR_INVALID_ARG', message: /not loaded in this process/ },
    'a module this process has not loaded: refused, not loaded',
  );
  t.equal(addon.pkcs11Quiesce(SOFTHSM_LIB, 10), true, 'no thread inside a module never used');
});

t.test("a busy token's overflow waits for a place inside the module instead of going to JavaScript", async (t) => {
  const w = await world(t);
  const key = w.create('busy', 'ec-p256');
  const sign = signer(w.client, key.uri, 'ecdsa');
  await sign('first');
  await grantMade();
  // An OpenSSL application with 16 threads signing through the provider: more
  // requests at once than the serving threads may have inside the module.
  const outdir = w.box.file('stress');
  fs.mkdirSync(outdir);
  const pid = w.agent.child.pid;
  const before = runTimes(pid);
  const r = spawnSync(STRESS, ['threads', MODULES, outdir, key.uri, key.uri, '16', '250'], { env: w.box.env, encoding: 'utf8', timeout: 240_000 });
  const ran = since(before, runTimes(pid));
  t.equal(r.status, 0, `16 threads × 250 signatures, each verified by the program: ${r.stdout.slice(-500)}${r.stderr}`);
  opensslOk(t, ['dgst', '-sha256', '-verify', key.pubFile, '-signature', path.join(outdir, 'thread-7-own.sig'), path.join(outdir, 'thread-7-own.msg')]);
  t.ok(ran.main < ran.serving / 10, `the serving threads made them, JavaScript did not take the overflow (${formatRunTimes(ran)})`);
  t.equal(w.audited().length, 16 * 250 + 1, 'one audit line each');
});

/** Holds an fcntl write lock on |file| (SoftHSM2 takes a read lock on its token's generation file for every operation) until release(). */
async function holdLock(t, file) {
  // python3 is there wherever node-gyp builds the addon; Node itself has no fcntl locks.
  const child = spawn(
    'python3',
    ['-c', 'import fcntl,sys\nf=open(sys.argv[1],"r+b")\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint("locked",flush=True)\nsys.stdin.read()', file],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(() => (child.kill(), exited));
  await new Promise((resolve, reject) => {
    child.stdout.once('data', (d) => (String(d).includes('locked') ? resolve() : reject(new Error(`lock holder said ${d}`))));
    child.once('exit', (code) => reject(new Error(`lock holder exited ${code}`)));
  });
  return () => (child.stdin.end(), exited);
}

/**
 * Hangs the test token (the one labelled |label|) for real: SoftHSM2 read-locks its generation file for every
 * operation. Returns release().
 */
async function hangToken(t, label = token.label) {
  // SoftHSM2 keeps the label, padded to 32 bytes, in the token's own token.object
  const padded = Buffer.from(label.padEnd(32, ' '));
  const tokenDir = fs
    .readdirSync(path.join(token.dir, 'tokens'))
    .map((d) => path.join(token.dir, 'tokens', d))
    .find((d) => fs.existsSync(path.join(d, 'generation')) && fs.readFileSync(path.join(d, 'token.object')).includes(padded));
  if (!tokenDir) throw new Error(`no SoftHSM2 token labelled '${label}' in ${token.dir}`);
  const release = await holdLock(t, path.join(tokenDir, 'generation'));
  t.teardown(release);
  return release;
}

t.test('a token that hangs costs the agent neither PING nor local keys; it signs again once it answers', async (t) => {
  // the token keyring's timeout below the clients' own, so that the KeyService's answer is seen
  const hsmTimeoutMs = 1500;
  const w = await world(t, { hsm: { ...keyrings.hsm, timeout_ms: hsmTimeoutMs }, local: { type: 'local' } });
  const key = w.create('hangs', 'ec-p256');
  const localUri = cliOk(t, w.box, ['keys', 'create', 'beside', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const localPub = crypto.createPublicKey(cliOk(t, w.box, ['keys', 'export', localUri]));
  const signHsm = signer(w.client, key.uri, 'ecdsa');
  const signLocal = signer(w.client, localUri, 'ecdsa');
  await signHsm('warm up');
  await signLocal('warm up');
  await grantMade();

  const release = await hangToken(t);
  // One connection per request, so that every serving thread that may enter the module does, and blocks there.
  const hung = await Promise.all(Array.from({ length: 6 }, () => AgentClient.connect(w.box.socket, { timeoutMs: 8000 })));
  t.teardown(() => hung.forEach((c) => c.close()));
  let settled = 0;
  let firstDone;
  const firstSettled = new Promise((r) => (firstDone = r));
  const signHung = hung.map((c) => signer(c, key.uri, 'ecdsa'));
  const pending = signHung.map((sign, i) =>
    sign(`while hung ${i}`)
      .then(
        (sig) => ({ sig, msg: `while hung ${i}` }),
        (err) => ({ err }),
      )
      .finally(() => ++settled === 1 && firstDone()),
  );
  await new Promise((r) => setTimeout(r, 800)); // well inside the keyring's timeout
  const fresh = await AgentClient.connect(w.box.socket, { timeoutMs: 8000 });
  t.teardown(() => fresh.close());
  await fresh.request(MsgType.PING, []);
  const msg = 'beside a hung token';
  t.ok(crypto.verify('sha256', Buffer.from(msg), localPub, await signer(fresh, localUri, 'ecdsa')(msg)), 'a local key signs while the token hangs');
  t.equal(settled, 0, 'PING and the local key were answered while every request to the token was still waiting');

  // Threads inside the module wait there; a request beyond them goes to the KeyService, whose timeout answers it.
  const answered = await Promise.race([firstSettled.then(() => true), new Promise((r) => setTimeout(r, hsmTimeoutMs + 3000, false))]);
  t.ok(answered, 'a request to the hung token is answered while the token hangs');
  // the others sent to the KeyService time out within the place wait's 50 ms of the first
  await new Promise((r) => setTimeout(r, 300));
  release();
  const all = await Promise.all(pending);
  t.ok(
    all.every((a) => (a.sig ? crypto.verify('sha256', Buffer.from(a.msg), key.pub, a.sig) : /timed out|did not answer/.test(a.err.message))),
    `every request to the hung token got a valid signature or a timeout (${all.map((a) => (a.sig ? 'signed' : a.err.message)).join('; ')})`,
  );
  const agentPid = w.agent.child.pid;
  const servingThreads = fs
    .readdirSync(`/proc/${agentPid}/task`)
    .filter((tid) => fs.readFileSync(`/proc/${agentPid}/task/${tid}/comm`, 'utf8').trim() === 'kmsbridge-serve').length;
  t.ok(
    all.filter((a) => a.sig).length <= servingThreads - 1,
    `only the requests the serving threads took inside the module waited for the token (${servingThreads} threads, one stays out): none was held behind them`,
  );
  t.ok(
    all.some((a) => a.err?.message.includes(`keyring 'hsm' (pkcs11, ${SOFTHSM_LIB}) did not answer sign with ${key.uri} within ${hsmTimeoutMs} ms`)),
    'the KeyService answered with its timeout, naming the keyring and the library',
  );
  for (let i = 0; i < 20; i++) {
    const m = `after ${i}`;
    t.ok(crypto.verify('sha256', Buffer.from(m), key.pub, await signHsm(m)), `the token signs again (${i})`, { diagnostic: false });
  }
});

t.test('a token that hangs holds only the keyrings of its own PKCS#11 library: another library answers meanwhile', async (t) => {
  // A second library: a copy of SoftHSM2 at another path is loaded apart (its own state, its own C_Initialize), as an
  // HSM vendor's client beside a TPM's would be; its token sits beside the first in the same token directory.
  const other = { ...addToken(t, token, 'kmsbridge-other'), library: path.join(token.dir, 'libsofthsm2-other.so') };
  fs.copyFileSync(SOFTHSM_LIB, other.library);
  const hsmTimeoutMs = 1500;
  const w = await world(t, {
    hsm: { ...keyrings.hsm, timeout_ms: hsmTimeoutMs },
    other: { ...keyrings.hsm, library: other.library, token_label: other.label, timeout_ms: hsmTimeoutMs },
  });
  const hung = w.create('stuck', 'ec-p256');
  const otherUri = cliOk(t, w.box, ['keys', 'create', 'free', '--keyring', 'other', '--type', 'ec-p256']).trim();
  const otherPub = path.join(w.box.dir, 'free.pub.pem');
  readPublicKeyPem(t, other, otherUri, otherPub);
  // Each keyring's first signature opens its token (slot, session, login) before the hang.
  await signer(w.client, hung.uri, 'ecdsa')('warm up');
  await signer(w.client, otherUri, 'ecdsa')('warm up');

  const release = await hangToken(t); // the first token only

  // SHA-384: a shape nothing granted yet, so the KeyService makes each signature on the library's token thread.
  const sha384 = (uri, msg) =>
    w.client
      .request(MsgType.SIGN, [
        { tag: Tag.URI, value: uri },
        { tag: Tag.ALGORITHM, value: 'ecdsa' },
        { tag: Tag.DIGEST, value: 'sha384' },
        { tag: Tag.DATA, value: crypto.createHash('sha384').update(msg).digest() },
      ])
      .then((f) => f.requireBytes(Tag.RESULT));
  const stuck = sha384(hung.uri, 'held').then(
    () => 'signed',
    (err) => err.message,
  );
  await new Promise((r) => setTimeout(r, 300)); // the hung token's thread is inside the library by now
  const started = Date.now();
  const msg = 'beside a hung library';
  const sig = await sha384(otherUri, msg).catch((err) => err);
  const took = Date.now() - started;
  if (!Buffer.isBuffer(sig)) t.fail(`the other library did not sign while the first token hung: ${sig.message}`);
  fs.writeFileSync(w.box.file('free.msg'), msg);
  fs.writeFileSync(w.box.file('free.sig'), Buffer.isBuffer(sig) ? sig : Buffer.alloc(0));
  t.match(
    opensslOk(t, ['dgst', '-sha384', '-verify', otherPub, '-signature', w.box.file('free.sig'), w.box.file('free.msg')]),
    /Verified OK/,
    'the other library signs while the first token hangs: openssl verifies it with the key pkcs11-tool read',
  );
  t.ok(took < hsmTimeoutMs / 2, `and it waited ${took} ms, not for the hung one's timeout (${hsmTimeoutMs} ms)`);
  t.match(await stuck, /did not answer|timed out/, "the hung token's own request ends at its keyring's timeout");
  release();
});

t.test('an agent stopped while its token hangs exits, and says it left a library call behind', async (t) => {
  const hsmTimeoutMs = 1500;
  const w = await world(t, { hsm: { ...keyrings.hsm, timeout_ms: hsmTimeoutMs } });
  const key = w.create('stops', 'ec-p256');
  await signer(w.client, key.uri, 'ecdsa')('warm up');
  await grantMade();
  await hangToken(t);
  const hung = await Promise.all(Array.from({ length: 6 }, () => AgentClient.connect(w.box.socket, { timeoutMs: 60_000 })));
  t.teardown(() => hung.forEach((c) => c.close()));
  // serving threads inside the module, and a KeyService call on the token thread
  const pending = hung.map((c, i) => signer(c, key.uri, 'ecdsa')(`at stop ${i}`).catch((err) => err));
  await new Promise((r) => setTimeout(r, 300));
  const stopped = Date.now();
  w.agent.child.kill('SIGTERM');
  // the grace for requests in flight (5 s), the serving threads' join (3 s), the token thread's close (the keyring's timeout)
  const limitMs = 5000 + 3000 + hsmTimeoutMs + 10_000;
  const exit = await Promise.race([w.agent.exited, new Promise((r) => setTimeout(r, limitMs, 'still running'))]);
  t.same(exit, { code: 0, signal: null }, `the agent exited 0 while the token still hung, after ${Date.now() - stopped} ms`);
  t.match(w.agent.log(), /exiting without waiting for a PKCS#11 library that has not returned/, 'and says why it did not wait');
  const answers = await Promise.all(pending);
  t.ok(
    answers.every((a) => a instanceof Error),
    'no request got a signature from the hung token',
  );
});

t.test('kmsbridge doctor names a token that does not answer, exits 1, and does not wait for it', async (t) => {
  const box = sandbox(t, { keyrings });
  box.env = { ...box.env, ...env };
  await hangToken(t);
  const started = Date.now();
  const r = cli(box, ['--timeout', '2000', 'doctor'], { timeout: 30_000 });
  t.equal(r.status, 1, `exits 1 after ${Date.now() - started} ms`);
  t.match(
    r.stdout,
    new RegExp(`note: the PKCS#11 library ${SOFTHSM_LIB} \\(keyring 'hsm'\\) did not answer doctor in time`),
    'the note names library and keyring',
  );
  t.match(r.stderr, /exiting without waiting for a PKCS#11 library that has not returned/, 'and says why it did not wait');
});
