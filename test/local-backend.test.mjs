// Every algorithm of the local backend, through a real agent on a real Unix
// socket; every result is checked by the system openssl (or ssh-keygen) with
// the public key that `kmsbridge keys export` printed.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { sandbox, cliOk, startAgent, opensslOk, openssl } from './lib/env.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

const box = sandbox(t, {
  keyrings: { local: { type: 'local', allow_pkcs1_decrypt: false }, legacy: { type: 'local', allow_pkcs1_decrypt: true, allow_sha1: true } },
});
await startAgent(t, box);
const client = await AgentClient.connect(box.socket, { timeoutMs: 60_000 });
t.teardown(() => client.close());

const SPECS = ['rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256', 'ec-p384', 'ec-p521', 'ed25519'];
const keys = {};
for (const spec of SPECS) {
  const uri = cliOk(t, box, ['keys', 'create', spec, '--keyring', 'local', '--type', spec]).trim();
  const pub = box.file(`${spec}.pub.pem`);
  cliOk(t, box, ['keys', 'export', uri, '--format', 'pem', '-o', pub]);
  keys[spec] = { uri, pub };
}
const message = Buffer.from('the quick brown fox signs with a key it never sees\n');
fs.writeFileSync(box.file('msg'), message);

async function sign(uri, fields) {
  const f = await client.request(MsgType.SIGN, [{ tag: Tag.URI, value: uri }, ...fields]);
  return f.requireBytes(Tag.RESULT);
}

function verifyDigestSig(t, pub, digestName, digest, sig, extra = []) {
  fs.writeFileSync(box.file('dgst'), digest);
  fs.writeFileSync(box.file('sig'), sig);
  const r = openssl([
    'pkeyutl',
    '-verify',
    '-pubin',
    '-inkey',
    pub,
    '-in',
    box.file('dgst'),
    '-sigfile',
    box.file('sig'),
    '-pkeyopt',
    `digest:${digestName}`,
    ...extra,
  ]);
  t.equal(r.status, 0, `openssl verifies: ${r.stdout.toString().trim()} ${r.stderr.trim()}`);
}

for (const spec of ['rsa-2048', 'rsa-3072', 'rsa-4096']) {
  t.test(`${spec}: PKCS#1 v1.5 signatures over SHA-224/256/384/512 verify with openssl`, async (t) => {
    for (const d of ['sha224', 'sha256', 'sha384', 'sha512']) {
      const digest = crypto.createHash(d).update(message).digest();
      const sig = await sign(keys[spec].uri, [
        { tag: Tag.ALGORITHM, value: 'rsa-pkcs1' },
        { tag: Tag.DIGEST, value: d },
        { tag: Tag.DATA, value: digest },
      ]);
      verifyDigestSig(t, keys[spec].pub, d, digest, sig);
    }
  });
}

t.test('RSA-PSS with salt lengths 0, digest length and maximum, and a different MGF1 digest, verifies with openssl', async (t) => {
  const { uri, pub } = keys['rsa-2048'];
  for (const [d, mgf1, salt] of [
    ['sha256', 'sha256', 32],
    ['sha256', 'sha256', 0],
    ['sha384', 'sha384', 256 - 48 - 2],
    ['sha512', 'sha256', 64],
    ['sha224', 'sha224', 28],
  ]) {
    const digest = crypto.createHash(d).update(message).digest();
    const sig = await sign(uri, [
      { tag: Tag.ALGORITHM, value: 'rsa-pss' },
      { tag: Tag.DIGEST, value: d },
      { tag: Tag.MGF1_DIGEST, value: mgf1 },
      { tag: Tag.SALT_LENGTH, value: salt },
      { tag: Tag.DATA, value: digest },
    ]);
    verifyDigestSig(t, pub, d, digest, sig, ['-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', `rsa_pss_saltlen:${salt}`, '-pkeyopt', `rsa_mgf1_md:${mgf1}`]);
  }
});

t.test('RSA-PSS with a salt longer than the key allows is refused with the maximum named', async (t) => {
  const digest = crypto.createHash('sha256').update(message).digest();
  await t.rejects(
    sign(keys['rsa-2048'].uri, [
      { tag: Tag.ALGORITHM, value: 'rsa-pss' },
      { tag: Tag.DIGEST, value: 'sha256' },
      { tag: Tag.SALT_LENGTH, value: 300 },
      { tag: Tag.DATA, value: digest },
    ]),
    { codeName: 'BAD_REQUEST', message: /salt length 300 exceeds the maximum 222/ },
  );
});

for (const [spec, d] of [
  ['ec-p256', 'sha256'],
  ['ec-p384', 'sha384'],
  ['ec-p521', 'sha512'],
  ['ec-p256', 'sha512'],
]) {
  t.test(`${spec}: ECDSA over ${d} (DER signature) verifies with openssl`, async (t) => {
    const digest = crypto.createHash(d).update(message).digest();
    const sig = await sign(keys[spec].uri, [
      { tag: Tag.ALGORITHM, value: 'ecdsa' },
      { tag: Tag.DIGEST, value: d },
      { tag: Tag.DATA, value: digest },
    ]);
    t.equal(sig[0], 0x30, 'DER SEQUENCE');
    verifyDigestSig(t, keys[spec].pub, d, digest, sig);
    fs.writeFileSync(box.file('sig'), sig);
    const r = openssl(['dgst', `-${d}`, '-verify', keys[spec].pub, '-signature', box.file('sig'), box.file('msg')]);
    t.match(r.stdout.toString(), /Verified OK/, 'openssl dgst -verify over the message');
  });
}

t.test('ed25519: a signature over the whole message verifies with openssl -rawin', async (t) => {
  const sig = await sign(keys.ed25519.uri, [
    { tag: Tag.ALGORITHM, value: 'ed25519' },
    { tag: Tag.DATA, value: message },
  ]);
  t.equal(sig.length, 64);
  fs.writeFileSync(box.file('sig'), sig);
  const r = openssl(['pkeyutl', '-verify', '-pubin', '-inkey', keys.ed25519.pub, '-rawin', '-in', box.file('msg'), '-sigfile', box.file('sig')]);
  t.equal(r.status, 0, r.stderr);
  // and a tampered message does not
  fs.writeFileSync(box.file('msg2'), Buffer.concat([message, Buffer.from('x')]));
  t.not(
    openssl(['pkeyutl', '-verify', '-pubin', '-inkey', keys.ed25519.pub, '-rawin', '-in', box.file('msg2'), '-sigfile', box.file('sig')]).status,
    0,
    'tampered message fails',
  );
});

t.test('RSA-OAEP decrypts what openssl encrypted, with SHA-1/256/384/512 and a label', async (t) => {
  const { uri, pub } = keys['rsa-3072'];
  for (const [d, label] of [
    ['sha1', ''],
    ['sha256', ''],
    ['sha384', '6c6162656c'],
    ['sha512', ''],
  ]) {
    const secret = crypto.randomBytes(32);
    const labelOpt = label ? ['-pkeyopt', `rsa_oaep_label:${label}`] : [];
    const ct = opensslOk(
      t,
      ['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', `rsa_oaep_md:${d}`, ...labelOpt],
      { input: secret },
    );
    const f = await client.request(MsgType.DECRYPT, [
      { tag: Tag.URI, value: uri },
      { tag: Tag.ALGORITHM, value: 'rsa-oaep' },
      { tag: Tag.DIGEST, value: d },
      ...(label ? [{ tag: Tag.LABEL, value: Buffer.from(label, 'hex') }] : []),
      { tag: Tag.DATA, value: ct },
    ]);
    t.same(f.requireBytes(Tag.RESULT), secret, `OAEP ${d}${label ? ' with label' : ''}`);
  }
});

t.test('PKCS#1 v1.5 decryption is refused unless the keyring allows it, and then works', async (t) => {
  const secret = Buffer.from('pkcs1 secret');
  const ct = opensslOk(t, ['pkeyutl', '-encrypt', '-pubin', '-inkey', keys['rsa-2048'].pub, '-pkeyopt', 'rsa_padding_mode:pkcs1'], { input: secret });
  await t.rejects(
    client.request(MsgType.DECRYPT, [
      { tag: Tag.URI, value: keys['rsa-2048'].uri },
      { tag: Tag.ALGORITHM, value: 'rsa-pkcs1-decrypt' },
      { tag: Tag.DATA, value: ct },
    ]),
    { codeName: 'UNSUPPORTED', message: /PKCS#1 v1.5 decryption is disabled for keyring 'local'.*allow_pkcs1_decrypt/ },
  );
  const uri = cliOk(t, box, ['keys', 'create', 'legacy-rsa', '--keyring', 'legacy', '--type', 'rsa-2048']).trim();
  cliOk(t, box, ['keys', 'export', uri, '-o', box.file('legacy.pem')]);
  const ct2 = opensslOk(t, ['pkeyutl', '-encrypt', '-pubin', '-inkey', box.file('legacy.pem'), '-pkeyopt', 'rsa_padding_mode:pkcs1'], { input: secret });
  const f = await client.request(MsgType.DECRYPT, [
    { tag: Tag.URI, value: uri },
    { tag: Tag.ALGORITHM, value: 'rsa-pkcs1-decrypt' },
    { tag: Tag.DATA, value: ct2 },
  ]);
  t.same(f.requireBytes(Tag.RESULT), secret);
});

for (const [spec, curve] of [
  ['ec-p256', 'P-256'],
  ['ec-p384', 'P-384'],
  ['ec-p521', 'P-521'],
]) {
  t.test(`${spec}: ECDH gives the secret openssl pkeyutl -derive computes from the other side`, async (t) => {
    const peer = box.file(`peer-${spec}.pem`);
    opensslOk(t, ['genpkey', '-algorithm', 'EC', '-pkeyopt', `ec_paramgen_curve:${curve}`, '-out', peer]);
    const peerSpki = opensslOk(t, ['pkey', '-in', peer, '-pubout', '-outform', 'DER']);
    const f = await client.request(MsgType.DERIVE, [
      { tag: Tag.URI, value: keys[spec].uri },
      { tag: Tag.PEER_KEY, value: peerSpki },
    ]);
    const expected = opensslOk(t, ['pkeyutl', '-derive', '-inkey', peer, '-peerkey', keys[spec].pub]);
    t.same(f.requireBytes(Tag.RESULT), expected);
  });
}

t.test('ECDH with a peer key on another curve is refused clearly', async (t) => {
  const peer = box.file('peer-p384.pem');
  opensslOk(t, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384', '-out', peer]);
  const peerSpki = opensslOk(t, ['pkey', '-in', peer, '-pubout', '-outform', 'DER']);
  await t.rejects(
    client.request(MsgType.DERIVE, [
      { tag: Tag.URI, value: keys['ec-p256'].uri },
      { tag: Tag.PEER_KEY, value: peerSpki },
    ]),
    {
      codeName: 'UNSUPPORTED',
      message: /not on the key's curve P-256/,
    },
  );
});

t.test('the OpenSSH export of every key type is what ssh-keygen derives from the PEM, and ssh-keygen -l reads it', async (t) => {
  for (const spec of SPECS) {
    const line = cliOk(t, box, ['keys', 'export', keys[spec].uri, '--format', 'openssh']);
    const fp = spawnOk(t, 'ssh-keygen', ['-l', '-f', '-'], line);
    t.match(fp, spec.startsWith('rsa') ? /\(RSA\)/ : spec === 'ed25519' ? /\(ED25519\)/ : /\(ECDSA\)/, `${spec}: ${fp.trim()}`);
    if (spec !== 'ed25519') {
      // ssh-keygen's own conversion of the PKCS#8 PEM must give the same key blob
      const theirs = spawnOk(t, 'ssh-keygen', ['-i', '-m', 'PKCS8', '-f', keys[spec].pub], '');
      t.equal(line.trim().split(' ')[1], theirs.trim().split(' ')[1], `${spec}: same blob as ssh-keygen -i -m PKCS8`);
    }
  }
});

t.test('random bytes come in the length asked, and differ each time', async (t) => {
  const a = (await client.request(MsgType.RANDOM, [{ tag: Tag.LENGTH, value: 64 }])).requireBytes(Tag.RESULT);
  const b = (await client.request(MsgType.RANDOM, [{ tag: Tag.LENGTH, value: 64 }])).requireBytes(Tag.RESULT);
  t.equal(a.length, 64);
  t.not(a.toString('hex'), b.toString('hex'));
  await t.rejects(client.request(MsgType.RANDOM, [{ tag: Tag.LENGTH, value: 70000 }]), { codeName: 'BAD_REQUEST', message: /outside 1..65536/ });
});

import { spawnSync } from 'node:child_process';
function spawnOk(t, cmd, args, input) {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) t.fail(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}
