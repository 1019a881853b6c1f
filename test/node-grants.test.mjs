// In-process grants (src-native/node/grants.c): once the KeyService worker
// has approved and run a signature with a local key, the same operation runs
// on the caller's thread. Checked here: every such signature verifies (node
// and the system openssl) and is audited once; the worker thread is no
// longer involved (per-thread run time from /proc); any other operation
// still meets the KeyService's policy; a key deleted or replaced behind the
// process's back, and a closed KeyService, sign nothing with the old key.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { sandbox, cliOk, opensslOk } from './lib/env.mjs';
import kmsbridge from '../dist/index.js';
import { native } from '../dist/native.js';

const box = sandbox(t);
Object.assign(process.env, { KMSBRIDGE_CONFIG: box.config, KMSBRIDGE_AGENT_SOCK: box.socket });
const create = (name, type) => cliOk(t, box, ['keys', 'create', name, '--keyring', 'local', '--type', type]).trim();
const publicKey = (uri) => crypto.createPublicKey(cliOk(t, box, ['keys', 'export', uri]));
const auditLines = () => (fs.existsSync(box.file('audit.log')) ? fs.readFileSync(box.file('audit.log'), 'utf8').trim().split('\n').filter(Boolean) : []);
/** The audit records written after the first |n| lines. */
const auditedSince = (n) =>
  auditLines()
    .slice(n)
    .map((l) => JSON.parse(l));

/** Nanoseconds this process's threads have run (schedstat): the main thread, and all others. */
function runTimes() {
  let main = 0;
  let others = 0;
  for (const tid of fs.readdirSync('/proc/self/task')) {
    const ns = Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    if (Number(tid) === process.pid) main += ns;
    else others += ns;
  }
  return { main, others };
}

/** Runs |fn|; its result and the milliseconds the main thread and the others ran meanwhile. */
function threadTimesDuring(fn) {
  const before = runTimes();
  const result = fn();
  const after = runTimes();
  return { result, main: (after.main - before.main) / 1e6, others: (after.others - before.others) / 1e6 };
}

const ec = create('grant-ec', 'ec-p256');
const rsa = create('grant-rsa', 'rsa-2048');
const kb = await kmsbridge.load();
const data = Buffer.from('signed on the caller thread');
const pss = (key) => ({ key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });

t.test('approved signatures run on the calling thread: each verifies and is audited once', async (t) => {
  const cases = [
    { name: 'ECDSA P-256', key: kb.privateKey(ec), pub: publicKey(ec), n: 400 },
    { name: 'RSA PKCS#1', key: kb.privateKey(rsa), pub: publicKey(rsa), n: 100 },
    { name: 'RSA-PSS', key: pss(kb.privateKey(rsa)), pub: pss(publicKey(rsa)), n: 100 },
  ];
  for (const c of cases) crypto.sign('sha256', data, c.key); // approved and run by the worker once
  await new Promise((r) => setTimeout(r, 100)); // the worker grants after answering
  const lines = auditLines().length;
  const { result: sigs, main, others } = threadTimesDuring(() => cases.map((c) => Array.from({ length: c.n }, () => crypto.sign('sha256', data, c.key))));
  cases.forEach((c, i) =>
    t.ok(
      sigs[i].every((s) => crypto.verify('sha256', data, c.pub, s)),
      `${c.n} ${c.name} signatures verify`,
    ),
  );
  t.ok(others < main / 5, `the worker thread was not involved (main thread ${main.toFixed(1)} ms, other threads ${others.toFixed(1)} ms)`);
  const added = auditedSince(lines);
  t.equal(added.length, 600, 'one audit line per signature');
  t.ok(
    added.every((r) => r.op === 'sign' && r.outcome === 'ok' && r.pid === process.pid && r.digest === 'sha256' && [ec, rsa].includes(r.uri)),
    'with the URI, algorithm, digest and pid, as the worker writes them',
  );
  t.equal(added.filter((r) => r.alg === 'rsa-pss').length, 100);
  // and the system openssl agrees
  fs.writeFileSync(box.file('grant.msg'), data);
  fs.writeFileSync(box.file('grant-ec.sig'), sigs[0][399]);
  fs.writeFileSync(box.file('grant-ec.pub'), cliOk(t, box, ['keys', 'export', ec]));
  opensslOk(t, ['dgst', '-sha256', '-verify', box.file('grant-ec.pub'), '-signature', box.file('grant-ec.sig'), box.file('grant.msg')]);
  fs.writeFileSync(box.file('grant-rsa.sig'), sigs[2][99]);
  fs.writeFileSync(box.file('grant-rsa.pub'), cliOk(t, box, ['keys', 'export', rsa]));
  opensslOk(t, [
    'dgst',
    '-sha256',
    '-verify',
    box.file('grant-rsa.pub'),
    '-sigopt',
    'rsa_padding_mode:pss',
    '-sigopt',
    'rsa_pss_saltlen:32',
    '-signature',
    box.file('grant-rsa.sig'),
    box.file('grant.msg'),
  ]);
});

t.test('Ed25519 too: messages of any length, signed on the calling thread, the same signatures the worker makes', async (t) => {
  const ed = create('grant-ed', 'ed25519');
  const key = kb.privateKey(ed);
  const pub = publicKey(ed);
  const first = crypto.sign(null, Buffer.from('first'), key); // approved and run by the worker
  await new Promise((r) => setTimeout(r, 100));
  const msgs = Array.from({ length: 1000 }, (_, i) => crypto.randomBytes(1 + ((i * 53) % 900)));
  const lines = auditLines().length;
  const { result: sigs, main, others } = threadTimesDuring(() => msgs.map((m) => crypto.sign(null, m, key)));
  t.ok(crypto.verify(null, Buffer.from('first'), pub, first), "the worker's signature verifies");
  t.same(crypto.sign(null, Buffer.from('first'), key), first, 'signed again here, the same message gets the same signature (Ed25519 is deterministic)');
  t.ok(
    sigs.every((s, i) => crypto.verify(null, msgs[i], pub, s)),
    '1,000 signatures of 1 to 900 bytes verify',
  );
  // (other threads: the worker does nothing; V8's garbage collector some)
  t.ok(others < main / 2, `the worker thread was not involved (main thread ${main.toFixed(1)} ms, other threads ${others.toFixed(1)} ms)`);
  const added = auditedSince(lines);
  t.equal(added.length, 1001, 'one audit line per signature');
  t.ok(
    added.every((r) => r.alg === 'ed25519' && r.uri === ed && r.pid === process.pid && !('digest' in r)),
    'as the worker writes them',
  );
  fs.writeFileSync(box.file('grant-ed.msg'), msgs[999]);
  fs.writeFileSync(box.file('grant-ed.sig'), sigs[999]);
  fs.writeFileSync(box.file('grant-ed.pub'), cliOk(t, box, ['keys', 'export', ed]));
  opensslOk(t, [
    'pkeyutl',
    '-verify',
    '-pubin',
    '-inkey',
    box.file('grant-ed.pub'),
    '-rawin',
    '-in',
    box.file('grant-ed.msg'),
    '-sigfile',
    box.file('grant-ed.sig'),
  ]);
});

t.test('anything else still goes through the KeyService and its policy', async (t) => {
  const key = kb.privateKey(rsa);
  const pub = publicKey(rsa);
  const other = crypto.sign('sha384', data, key);
  t.ok(crypto.verify('sha384', data, pub, other), 'another digest: the worker signs it');
  const salted = crypto.sign('sha256', data, { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 20 });
  t.ok(crypto.verify('sha256', data, { key: pub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 20 }, salted), 'another salt length too');
  t.throws(() => crypto.sign('sha1', data, key), 'SHA-1 is still refused after SHA-256 was granted');
  t.match(native().lastError(), /sha1/i, 'by the keyring policy');
});

t.test('a key replaced or deleted behind the process is not signed with', async (t) => {
  const uri = create('rotated', 'ec-p256');
  const oldPub = publicKey(uri);
  const key = kb.privateKey(uri);
  crypto.sign('sha256', data, key);
  await new Promise((r) => setTimeout(r, 100));
  t.ok(crypto.verify('sha256', data, oldPub, crypto.sign('sha256', data, key)), 'granted, with the first key');
  cliOk(t, box, ['keys', 'delete', uri]);
  t.throws(() => crypto.sign('sha256', data, key), 'deleted: no signature');
  t.match(native().lastError(), /not found/);
  create('rotated', 'ec-p256');
  const newPub = publicKey(uri);
  const sig = crypto.sign('sha256', data, key);
  t.ok(crypto.verify('sha256', data, newPub, sig), 'replaced: the new key signs');
  t.notOk(crypto.verify('sha256', data, oldPub, sig), 'not the old one');
});

t.test('after close(), granted operations stop too', async (t) => {
  const key = kb.privateKey(ec);
  crypto.sign('sha256', data, key);
  await kb.close();
  t.throws(() => crypto.sign('sha256', data, key), 'no signature from a closed KeyService');
});
