// VERIFY and ENCRYPT through a real agent: the public-key operations a caller
// sends to the key manager's side for its audit log (the ENGINE's
// REMOTE_PUBKEY mode). Signatures come from the agent's SIGN and are checked
// by VERIFY and, independently, by the system openssl with the exported
// public key; ciphertexts from ENCRYPT are opened by the agent's DECRYPT.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { sandbox, cliOk, startAgent, openssl } from './lib/env.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';
import { ErrorCode } from '../dist/errors.js';

const hash = (alg, b) => crypto.createHash(alg).update(b).digest();

async function setup(t, keyrings) {
  const box = sandbox(t, keyrings ? { keyrings } : undefined);
  await startAgent(t, box);
  const client = await AgentClient.connect(box.socket);
  t.teardown(() => client.close());
  const key = (name, type) => {
    const uri = cliOk(t, box, ['keys', 'create', name, '--keyring', 'local', '--type', type]).trim();
    const pem = box.file(`${name}.pub.pem`);
    fs.writeFileSync(pem, cliOk(t, box, ['keys', 'export', uri]));
    return { uri, pem };
  };
  const audit = () =>
    fs
      .readFileSync(box.file('audit.log'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
  return { box, client, key, audit };
}

/** The SIGN/VERIFY fields of one request (the digest or message goes in DATA). */
function fields(uri, { algorithm, digest, mgf1Digest, saltLength }, data, extra = []) {
  const f = [
    { tag: Tag.URI, value: uri },
    { tag: Tag.ALGORITHM, value: algorithm },
  ];
  if (digest) f.push({ tag: Tag.DIGEST, value: digest });
  if (mgf1Digest) f.push({ tag: Tag.MGF1_DIGEST, value: mgf1Digest });
  if (saltLength !== undefined) f.push({ tag: Tag.SALT_LENGTH, value: saltLength });
  f.push({ tag: Tag.DATA, value: data }, ...extra);
  return f;
}

const sign = async (client, uri, params, data) => (await client.request(MsgType.SIGN, fields(uri, params, data))).requireBytes(Tag.RESULT);
const verify = (client, uri, params, data, signature) => client.request(MsgType.VERIFY, fields(uri, params, data, [{ tag: Tag.SIGNATURE, value: signature }]));

function opensslVerifies(box, pem, data, sig, pkeyopts, rawin = false) {
  const dataFile = box.file('tbs.bin');
  const sigFile = box.file('sig.bin');
  fs.writeFileSync(dataFile, data);
  fs.writeFileSync(sigFile, sig);
  const args = ['pkeyutl', '-verify', '-pubin', '-inkey', pem, '-in', dataFile, '-sigfile', sigFile];
  if (rawin) args.push('-rawin');
  for (const o of pkeyopts) args.push('-pkeyopt', o);
  const r = openssl(args);
  return r.status === 0 && /Signature Verified Successfully/.test(r.stdout.toString());
}

const tamper = (b) => {
  const c = Buffer.from(b);
  c[c.length >> 1] ^= 0x01;
  return c;
};

const CASES = [
  { name: 'RSA-2048 PKCS#1 v1.5 with SHA-256', type: 'rsa-2048', params: { algorithm: 'rsa-pkcs1', digest: 'sha256' }, pkeyopts: ['digest:sha256'] },
  {
    name: 'RSA-2048 PSS with SHA-384, MGF1-SHA-256, salt 20',
    type: 'rsa-2048',
    params: { algorithm: 'rsa-pss', digest: 'sha384', mgf1Digest: 'sha256', saltLength: 20 },
    pkeyopts: ['digest:sha384', 'rsa_padding_mode:pss', 'rsa_mgf1_md:sha256', 'rsa_pss_saltlen:20'],
  },
  { name: 'EC P-256 ECDSA with SHA-256', type: 'ec-p256', params: { algorithm: 'ecdsa', digest: 'sha256' }, pkeyopts: ['digest:sha256'] },
  { name: 'EC P-384 ECDSA with SHA-384', type: 'ec-p384', params: { algorithm: 'ecdsa', digest: 'sha384' }, pkeyopts: ['digest:sha384'] },
  { name: 'Ed25519 over the whole message', type: 'ed25519', params: { algorithm: 'ed25519' }, pkeyopts: [], rawin: true },
];

for (const c of CASES) {
  t.test(`VERIFY accepts an agent signature that openssl also verifies, and rejects a tampered one: ${c.name}`, async (t) => {
    const { box, client, key, audit } = await setup(t);
    const { uri, pem } = key('k', c.type);
    const msg = Buffer.from(`verify me: ${c.name}`);
    const data = c.params.digest ? hash(c.params.digest, msg) : msg;
    const sig = await sign(client, uri, c.params, data);

    t.ok(opensslVerifies(box, pem, data, sig, c.pkeyopts, c.rawin), 'openssl pkeyutl -verify with the exported public key accepts the signature');
    const ok = await verify(client, uri, c.params, data, sig);
    t.same(ok.list, [], 'VERIFY of the good signature: an empty reply');

    const bad = tamper(sig);
    t.notOk(opensslVerifies(box, pem, data, bad, c.pkeyopts, c.rawin), 'openssl rejects the tampered signature');
    await t.rejects(verify(client, uri, c.params, data, bad), { code: ErrorCode.BAD_SIGNATURE, message: `signature does not verify with ${uri}` });
    const otherData = c.params.digest ? hash(c.params.digest, Buffer.from('something else')) : Buffer.from('something else');
    await t.rejects(verify(client, uri, c.params, otherData, sig), { code: ErrorCode.BAD_SIGNATURE }, 'the good signature over other data is BAD_SIGNATURE');

    const lines = audit().filter((l) => l.op === 'verify');
    t.same(
      lines.map((l) => [l.uri, l.alg, l.outcome]),
      [
        [uri, c.params.algorithm, 'ok'],
        [uri, c.params.algorithm, 'BAD_SIGNATURE'],
        [uri, c.params.algorithm, 'BAD_SIGNATURE'],
      ],
      'the audit log has one verify line per request, with its outcome',
    );
    t.notOk(fs.readFileSync(box.file('audit.log'), 'utf8').includes(sig.toString('hex')), 'the audit log holds no signature bytes');
  });
}

t.test('VERIFY of RSA-PSS without SALT_LENGTH accepts any salt length; with one, only that one', async (t) => {
  const { client, key } = await setup(t);
  const { uri } = key('k', 'rsa-2048');
  const data = hash('sha256', Buffer.from('pss'));
  const params = { algorithm: 'rsa-pss', digest: 'sha256', saltLength: 32 };
  const sig = await sign(client, uri, params, data);
  t.same((await verify(client, uri, { algorithm: 'rsa-pss', digest: 'sha256' }, data, sig)).list, [], 'no SALT_LENGTH: recovered');
  t.same((await verify(client, uri, params, data, sig)).list, [], 'SALT_LENGTH 32 as signed');
  await t.rejects(verify(client, uri, { ...params, saltLength: 20 }, data, sig), { code: ErrorCode.BAD_SIGNATURE }, 'SALT_LENGTH 20 does not match');
});

t.test('VERIFY applies the signing policy: SHA-1, digest length, algorithm of the key', async (t) => {
  const { client, key } = await setup(t);
  const rsa = key('rsa', 'rsa-2048').uri;
  const ec = key('ec', 'ec-p256').uri;
  const sig = Buffer.alloc(256, 1);
  await t.rejects(verify(client, rsa, { algorithm: 'rsa-pkcs1', digest: 'sha1' }, hash('sha1', Buffer.from('x')), sig), {
    code: ErrorCode.UNSUPPORTED,
    message: /SHA-1/,
  });
  await t.rejects(verify(client, rsa, { algorithm: 'rsa-pkcs1', digest: 'sha256' }, Buffer.alloc(20), sig), {
    code: ErrorCode.BAD_REQUEST,
    message: /32 bytes/,
  });
  await t.rejects(verify(client, ec, { algorithm: 'rsa-pss', digest: 'sha256' }, hash('sha256', Buffer.from('x')), sig), {
    code: ErrorCode.UNSUPPORTED,
    message: /does not allow rsa-pss/,
  });
  await t.rejects(client.request(MsgType.VERIFY, fields(ec, { algorithm: 'ecdsa', digest: 'sha256' }, hash('sha256', Buffer.from('x')))), {
    code: ErrorCode.BAD_REQUEST,
    message: /SIGNATURE/,
  });
});

const encrypt = async (client, uri, algorithm, data, opts = {}) => {
  const f = [
    { tag: Tag.URI, value: uri },
    { tag: Tag.ALGORITHM, value: algorithm },
  ];
  if (opts.digest) f.push({ tag: Tag.DIGEST, value: opts.digest });
  if (opts.label) f.push({ tag: Tag.LABEL, value: opts.label });
  f.push({ tag: Tag.DATA, value: data });
  return (await client.request(MsgType.ENCRYPT, f)).requireBytes(Tag.RESULT);
};
const decrypt = async (client, uri, algorithm, data, opts = {}) => {
  const f = [
    { tag: Tag.URI, value: uri },
    { tag: Tag.ALGORITHM, value: algorithm },
  ];
  if (opts.digest) f.push({ tag: Tag.DIGEST, value: opts.digest });
  if (opts.label) f.push({ tag: Tag.LABEL, value: opts.label });
  f.push({ tag: Tag.DATA, value: data });
  return (await client.request(MsgType.DECRYPT, f)).requireBytes(Tag.RESULT);
};

const ENCRYPTIONS = [
  { name: 'OAEP with the default SHA-1', algorithm: 'rsa-oaep', opts: {} },
  { name: 'OAEP with SHA-256 and a label', algorithm: 'rsa-oaep', opts: { digest: 'sha256', label: Buffer.from('context') } },
  { name: 'PKCS#1 v1.5 where the keyring allows its decryption', algorithm: 'rsa-pkcs1-decrypt', opts: {} },
];

for (const e of ENCRYPTIONS) {
  t.test(`ENCRYPT makes a ciphertext only the key's DECRYPT opens: ${e.name}`, async (t) => {
    const { client, key, audit } = await setup(t, { local: { type: 'local', allow_pkcs1_decrypt: true } });
    const { uri } = key('k', 'rsa-2048');
    const other = key('other', 'rsa-2048').uri;
    const plain = Buffer.from('a secret for the key manager');
    const c1 = await encrypt(client, uri, e.algorithm, plain, e.opts);
    const c2 = await encrypt(client, uri, e.algorithm, plain, e.opts);
    t.equal(c1.length, 256, 'the ciphertext is as long as the 2048-bit modulus');
    t.not(c1.toString('hex'), c2.toString('hex'), 'randomised padding: two encryptions differ');
    t.same(await decrypt(client, uri, e.algorithm, c1, e.opts), plain, 'DECRYPT with the key gives the plaintext back');
    t.same(await decrypt(client, uri, e.algorithm, c2, e.opts), plain, 'and for the second ciphertext too');
    const wrong = await decrypt(client, other, e.algorithm, c1, e.opts).catch((err) => err);
    t.ok(!(Buffer.isBuffer(wrong) && wrong.equals(plain)), 'another key does not open it');
    if (e.opts.label) {
      await t.rejects(decrypt(client, uri, e.algorithm, c1, { ...e.opts, label: Buffer.from('other') }), 'a different OAEP label does not open it');
    }
    const lines = audit().filter((l) => l.op === 'encrypt');
    t.same(
      lines.map((l) => [l.uri, l.alg, l.outcome]),
      [
        [uri, e.algorithm, 'ok'],
        [uri, e.algorithm, 'ok'],
      ],
      'the audit log has an encrypt line per request',
    );
  });
}

t.test('ENCRYPT applies the decryption policy and the padding limits', async (t) => {
  const { client, key } = await setup(t);
  const rsa = key('rsa', 'rsa-2048').uri;
  const ec = key('ec', 'ec-p256').uri;
  await t.rejects(encrypt(client, rsa, 'rsa-pkcs1-decrypt', Buffer.from('x')), { code: ErrorCode.UNSUPPORTED, message: /allow_pkcs1_decrypt/ });
  await t.rejects(encrypt(client, rsa, 'rsa-oaep', Buffer.alloc(256 - 2 * 32 - 1), { digest: 'sha256' }), {
    code: ErrorCode.BAD_REQUEST,
    message: /at most 190/,
  });
  t.equal((await encrypt(client, rsa, 'rsa-oaep', Buffer.alloc(190), { digest: 'sha256' })).length, 256, 'the largest OAEP-SHA-256 plaintext fits');
  await t.rejects(encrypt(client, ec, 'rsa-oaep', Buffer.from('x')), { code: ErrorCode.UNSUPPORTED, message: /does not allow rsa-oaep/ });
  await t.rejects(encrypt(client, rsa, 'rsa-raw', Buffer.from('x')), { code: ErrorCode.UNSUPPORTED, message: /encryption algorithm 'rsa-raw'/ });
});
