// The AWS KMS backend against the AWS KMS test double (test/aws-kms-server/):
// retries, timeouts, the public-key cache, key-id forms, AWS's refusals and
// error mapping. Every signature is verified by the system openssl with the
// public key the AWS SDK's own GetPublicKey returned.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import {
  CreateKeyCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  GetPublicKeyCommand,
  ListAliasesCommand,
  ScheduleKeyDeletionCommand,
} from '@aws-sdk/client-kms';
import { sandbox, cli, cliOk, openssl, startAgent } from './lib/env.mjs';
import { TEST_CREDENTIALS, awsEnv, blackhole, sdkClient, spkiPem, startTestKms } from './aws-kms-server/index.mjs';
import { KeyService } from '../dist/keyservice.js';
import { parseConfig } from '../dist/config.js';
import { AwsBackend } from '../dist/backends/aws.js';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

Object.assign(process.env, awsEnv());

const server = await startTestKms(t);
const sdk = sdkClient(server);
t.teardown(() => sdk.destroy());
const box = sandbox(t, { keyrings: {} });

function keyringToml(name, settings) {
  const lines = [`[keyrings.${name}]`, 'type = "aws"'];
  for (const [k, v] of Object.entries({ region: server.region, endpoint: server.url, timeout_ms: 10000, ...settings }))
    lines.push(`${k} = ${JSON.stringify(v)}`);
  return lines.join('\n');
}

/** A KeyService of the test's own, as the agent and the in-process worker run it. */
function keyService(t, keyrings = { aws: {} }) {
  const text =
    Object.entries(keyrings)
      .map(([n, s]) => keyringToml(n, s))
      .join('\n\n') + '\n';
  const ks = new KeyService(parseConfig(text, 'aws.test.mjs'));
  t.teardown(() => ks.close());
  return ks;
}

function backendFor(t, settings = {}) {
  const b = new AwsBackend(parseConfig(keyringToml('aws', settings), 'aws.test.mjs').keyrings.get('aws'));
  t.teardown(() => b.close());
  return b;
}

let serial = 0;
/** A key made in the test double with the SDK directly; returns its metadata and its alias. */
async function makeKey(keySpec, keyUsage = 'SIGN_VERIFY') {
  const r = await sdk.send(new CreateKeyCommand({ KeySpec: keySpec, KeyUsage: keyUsage }));
  const alias = `alias/t${++serial}-${keySpec.toLowerCase().replace(/_/g, '-')}`;
  const { CreateAliasCommand } = await import('@aws-sdk/client-kms');
  await sdk.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: r.KeyMetadata.KeyId }));
  return { ...r.KeyMetadata, alias };
}

/** The public key by the AWS SDK's GetPublicKey, as a PEM file. */
async function publicPem(keyId) {
  const r = await sdk.send(new GetPublicKeyCommand({ KeyId: keyId }));
  const file = box.file(`pub-${crypto.randomUUID()}.pem`);
  fs.writeFileSync(file, spkiPem(r.PublicKey));
  return file;
}

/** Verifies with the system openssl: a digest signature (RSA, ECDSA) or a whole-message one (Ed25519). */
function verify(t, pem, { digest, pss, message, signature, what }) {
  const sig = box.file(`sig-${crypto.randomUUID()}`);
  const input = box.file(`in-${crypto.randomUUID()}`);
  fs.writeFileSync(sig, signature);
  let args;
  if (digest) {
    fs.writeFileSync(input, crypto.createHash(digest).update(message).digest());
    args = ['pkeyutl', '-verify', '-pubin', '-inkey', pem, '-in', input, '-sigfile', sig, '-pkeyopt', `digest:${digest}`];
    if (pss) args.push('-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', 'rsa_pss_saltlen:digest');
  } else {
    fs.writeFileSync(input, message);
    args = ['pkeyutl', '-verify', '-pubin', '-inkey', pem, '-rawin', '-in', input, '-sigfile', sig];
  }
  const r = openssl(args);
  t.equal(r.status, 0, `${what}: openssl verifies (${r.stderr.trim() || r.stdout.toString().trim()})`);
}

const message = Buffer.from('signed in AWS KMS (the test double)\n');
const sha256 = (m) => crypto.createHash('sha256').update(m).digest();
const signReq = (data = sha256(message)) => ({ algorithm: 'rsa-pkcs1', digest: 'sha256', data });

async function rejects(t, promise, code, pattern, what) {
  try {
    await promise;
    t.fail(`${what}: expected ${code}, but it succeeded`);
    return undefined;
  } catch (err) {
    t.equal(err.codeName, code, `${what}: ${err.message}`);
    if (pattern) t.match(err.message, pattern, `${what}: message says why`);
    return err;
  }
}

const rsa = await makeKey('RSA_2048');
const rsaPem = await publicPem(rsa.KeyId);

t.test('a throttled Sign is retried with backoff and the signature verifies', async (t) => {
  const ks = keyService(t);
  const uri = `kms:aws/${rsa.alias}`;
  await ks.describe(uri);
  await server.reset();
  await server.addFault({ operation: 'Sign', kind: 'throttle', times: 2 });
  const signature = await ks.sign(uri, signReq());
  verify(t, rsaPem, { digest: 'sha256', message, signature, what: 'after two ThrottlingExceptions' });
  const s = await server.stats();
  t.equal(s.calls.Sign, 3, 'two throttled attempts and one that answered');
  t.equal(s.faulted.Sign, 2);
});

t.test('5xx answers, a dropped connection and a malformed body are retried', async (t) => {
  const ks = keyService(t);
  const uri = `kms:aws/${rsa.alias}`;
  await ks.describe(uri);
  await server.reset();
  await server.addFault([
    { operation: 'Sign', kind: 'server-error', status: 500 },
    { operation: 'Sign', kind: 'server-error', status: 503 },
  ]);
  await server.addFault({ operation: 'Sign', kind: 'drop' });
  await server.addFault({ operation: 'Sign', kind: 'malformed' });
  const started = Date.now();
  const signature = await ks.sign(uri, signReq());
  verify(t, rsaPem, { digest: 'sha256', message, signature, what: 'after 500, 503, a drop and a malformed body' });
  const s = await server.stats();
  t.equal(s.calls.Sign, 5, 'four failed attempts and one that answered');
  t.ok(Date.now() - started < 5000, 'backoff stays short');
});

t.test('throttling that never stops ends as THROTTLED with AWS message, inside the timeout', async (t) => {
  const ks = keyService(t, { aws: { timeout_ms: 8000 } });
  const uri = `kms:aws/${rsa.alias}`;
  await ks.describe(uri);
  await server.reset();
  await server.addFault({ operation: 'Sign', kind: 'throttle', times: 0 });
  t.teardown(() => server.clearFaults());
  const started = Date.now();
  await rejects(t, ks.sign(uri, signReq()), 'THROTTLED', /Rate exceeded.*|after 5 attempts/, 'endless ThrottlingException');
  t.ok(Date.now() - started < 8000, `gave up in ${Date.now() - started} ms`);
  t.equal((await server.stats()).calls.Sign, 5, 'max_attempts (5) attempts');
});

t.test('a slow endpoint hits the timeout with an error naming the endpoint', async (t) => {
  const ks = keyService(t, { aws: { timeout_ms: 1500 } });
  await server.addFault({ operation: 'GetPublicKey', kind: 'slow', delayMs: 10000, times: 0 });
  t.teardown(() => server.clearFaults());
  const started = Date.now();
  const err = await rejects(t, ks.describe(`kms:aws/${rsa.alias}`), 'TIMEOUT', server.url, 'GetPublicKey that takes 10 s');
  const took = Date.now() - started;
  t.ok(took >= 750 && took < 2500, `failed after ${took} ms (timeout_ms = 1500)`);
  t.match(err?.message ?? '', /timeout_ms/, 'says which setting to raise');
});

t.test('a blackholed endpoint fails within the timeout, naming the endpoint, in the CLI too', async (t) => {
  const hole = await blackhole(t);
  const ks = keyService(t, { aws: { endpoint: hole.url, timeout_ms: 1500 } });
  const started = Date.now();
  await rejects(t, ks.sign(`kms:aws/${rsa.alias}`, signReq()), 'TIMEOUT', hole.url, 'sign through a blackhole');
  t.ok(Date.now() - started < 2500, `failed after ${Date.now() - started} ms (timeout_ms = 1500)`);

  const cbox = sandbox(t, { keyrings: { aws: { type: 'aws', region: server.region, endpoint: hole.url, timeout_ms: 3000 } } });
  const t0 = Date.now();
  const r = cli(cbox, ['keys', 'export', `kms:aws/${rsa.alias}`], { env: awsEnv(), timeout: 20_000 });
  t.equal(r.status, 1, 'keys export fails');
  t.match(r.stderr, hole.url, `the CLI names the endpoint: ${r.stderr.trim()}`);
  t.ok(Date.now() - t0 < 10_000, 'and returns promptly');
});

t.test('the public key is fetched once for many signatures, through the agent and in the backend itself', async (t) => {
  const abox = sandbox(t, { keyrings: { aws: { type: 'aws', region: server.region, endpoint: server.url, timeout_ms: 10000 } } });
  Object.assign(abox.env, awsEnv());
  await startAgent(t, abox);
  const client = await AgentClient.connect(abox.socket, { timeoutMs: 30_000 });
  t.teardown(() => client.close());
  const ec = await makeKey('ECC_NIST_P256');
  const pem = await publicPem(ec.KeyId);
  await server.reset();
  for (let i = 0; i < 20; i++) {
    const m = Buffer.from(`message ${i}`);
    const f = await client.request(MsgType.SIGN, [
      { tag: Tag.URI, value: `kms:aws/${ec.alias}` },
      { tag: Tag.ALGORITHM, value: 'ecdsa' },
      { tag: Tag.DIGEST, value: 'sha256' },
      { tag: Tag.DATA, value: sha256(m) },
    ]);
    if (i % 5 === 0) verify(t, pem, { digest: 'sha256', message: m, signature: f.requireBytes(Tag.RESULT), what: `agent signature ${i}` });
  }
  let s = await server.stats();
  t.equal(s.calls.GetPublicKey, 1, 'one GetPublicKey for 20 signatures through the agent');
  t.equal(s.calls.Sign, 20);

  const backend = backendFor(t);
  await server.reset();
  const signal = new AbortController().signal;
  const pubs = await Promise.all(Array.from({ length: 5 }, () => backend.describe(ec.alias, signal)));
  for (let i = 0; i < 10; i++) await backend.sign(ec.alias, { algorithm: 'ecdsa', digest: 'sha256', data: sha256(message) }, signal);
  s = await server.stats();
  t.equal(s.calls.GetPublicKey, 1, 'one GetPublicKey for 5 concurrent describes and 10 signatures in one backend');
  t.same(pubs[0].publicKey, pubs[4].publicKey);
});

t.test('key ids, key ARNs, aliases and alias ARNs all resolve to the same key', async (t) => {
  const ks = keyService(t);
  const key = await makeKey('ECC_NIST_P384');
  const pem = await publicPem(key.Arn);
  const spki = openssl(['pkey', '-pubin', '-in', pem, '-outform', 'DER']).stdout;
  const aliasArn = `arn:aws:kms:${server.region}:${key.AWSAccountId}:${key.alias}`;
  for (const id of [key.KeyId, key.Arn, key.alias, aliasArn]) {
    const uri = `kms:aws/${id}`;
    const d = await ks.describe(uri);
    t.same(d.publicKey, spki, `${id}: describe gives the public key GetPublicKey gave`);
    t.equal(d.mandatoryDigest, 'sha384', `${id}: P-384 is bound to SHA-384`);
    const signature = await ks.sign(uri, { algorithm: 'ecdsa', digest: 'sha384', data: crypto.createHash('sha384').update(message).digest() });
    verify(t, pem, { digest: 'sha384', message, signature, what: id });
  }
});

t.test('every algorithm AWS KMS offers signs, and openssl verifies', async (t) => {
  const ks = keyService(t);
  const cases = [
    ['RSA_3072', 'rsa-pkcs1', ['sha256', 'sha384', 'sha512']],
    ['RSA_2048', 'rsa-pss', ['sha256', 'sha384', 'sha512']],
    ['ECC_NIST_P256', 'ecdsa', ['sha256']],
    ['ECC_NIST_P521', 'ecdsa', ['sha512']],
  ];
  for (const [spec, algorithm, digests] of cases) {
    const key = await makeKey(spec);
    const pem = await publicPem(key.KeyId);
    const uri = `kms:aws/${key.alias}`;
    const d = await ks.describe(uri);
    t.equal(d.pssSalt, 'digest', `${spec}: describe says the PSS salt is the digest length`);
    for (const digest of digests) {
      const data = crypto.createHash(digest).update(message).digest();
      const req = { algorithm, digest, data, ...(algorithm === 'rsa-pss' ? { saltLength: data.length } : {}) };
      verify(t, pem, { digest, pss: algorithm === 'rsa-pss', message, signature: await ks.sign(uri, req), what: `${spec} ${algorithm} ${digest}` });
    }
  }
  const rsaPss = await makeKey('RSA_2048');
  await rejects(
    t,
    ks.sign(`kms:aws/${rsaPss.alias}`, { algorithm: 'rsa-pss', digest: 'sha256', saltLength: 20, data: sha256(message) }),
    'UNSUPPORTED',
    /salt length/,
    'PSS salt of 20 bytes with SHA-256',
  );
  await rejects(
    t,
    backendFor(t).sign(
      rsaPss.alias,
      { algorithm: 'rsa-pss', digest: 'sha256', mgf1Digest: 'sha1', saltLength: 32, data: sha256(message) },
      new AbortController().signal,
    ),
    'UNSUPPORTED',
    /MGF1/,
    'PSS with MGF1-SHA-1',
  );
});

t.test('SHA-1 signatures are refused, and never sent to AWS KMS', async (t) => {
  await server.reset();
  const sha1 = crypto.createHash('sha1').update(message).digest();
  await rejects(
    t,
    keyService(t).sign(`kms:aws/${rsa.alias}`, { algorithm: 'rsa-pkcs1', digest: 'sha1', data: sha1 }),
    'UNSUPPORTED',
    /^AWS KMS does not sign with sha1 \(SHA-1 is broken/,
    'default policy: the key manager is named, no setting is suggested',
  );
  await rejects(
    t,
    keyService(t, { aws: { allow_sha1: true } }).sign(`kms:aws/${rsa.alias}`, { algorithm: 'rsa-pkcs1', digest: 'sha1', data: sha1 }),
    'UNSUPPORTED',
    /^AWS KMS does not sign with sha1/,
    'allow_sha1 = true cannot make AWS KMS sign SHA-1',
  );
  await rejects(
    t,
    backendFor(t).sign(rsa.alias, { algorithm: 'rsa-pkcs1', digest: 'sha1', data: sha1 }, new AbortController().signal),
    'UNSUPPORTED',
    /AWS KMS does not sign SHA-1/,
    'the backend itself',
  );
  t.notOk((await server.stats()).calls.Sign, 'no Sign request reached AWS KMS');
});

t.test('an ECDSA digest other than the curve one is refused', async (t) => {
  const ks = keyService(t);
  const key = await makeKey('ECC_NIST_P256');
  const uri = `kms:aws/${key.alias}`;
  const d = await ks.describe(uri);
  t.equal(d.mandatoryDigest, 'sha256', 'describe reports the mandatory digest');
  t.same(d.digests, ['sha256']);
  const data = crypto.createHash('sha384').update(message).digest();
  await rejects(t, ks.sign(uri, { algorithm: 'ecdsa', digest: 'sha384', data }), 'UNSUPPORTED', /sha256/, 'P-256 with SHA-384 (KeyService)');
  await rejects(
    t,
    backendFor(t).sign(key.alias, { algorithm: 'ecdsa', digest: 'sha384', data }, new AbortController().signal),
    'UNSUPPORTED',
    /P-256 keys only over sha256/,
    'P-256 with SHA-384 (backend)',
  );
});

t.test('Ed25519 signs whole messages up to 4096 bytes and refuses longer ones', async (t) => {
  const ks = keyService(t);
  const key = await makeKey('ECC_NIST_EDWARDS25519');
  const pem = await publicPem(key.KeyId);
  const uri = `kms:aws/${key.alias}`;
  t.equal((await ks.describe(uri)).maxMessage, 4096, 'describe reports the 4096-byte limit');
  const max = crypto.randomBytes(4096);
  verify(t, pem, { message: max, signature: await ks.sign(uri, { algorithm: 'ed25519', data: max }), what: '4096 bytes' });
  const small = Buffer.from('short');
  verify(t, pem, { message: small, signature: await ks.sign(uri, { algorithm: 'ed25519', data: small }), what: '5 bytes' });
  await rejects(t, ks.sign(uri, { algorithm: 'ed25519', data: crypto.randomBytes(4097) }), 'UNSUPPORTED', /4096/, '4097 bytes (KeyService)');
  await rejects(
    t,
    backendFor(t).sign(key.alias, { algorithm: 'ed25519', data: crypto.randomBytes(5000) }, new AbortController().signal),
    'UNSUPPORTED',
    /at most 4096 bytes/,
    '5000 bytes (backend)',
  );
});

t.test('OAEP with SHA-1 and SHA-256 decrypts; PKCS#1 v1.5 and other digests are refused', async (t) => {
  const ks = keyService(t, { aws: {}, dec: { allow_pkcs1_decrypt: true } });
  const key = await makeKey('RSA_2048', 'ENCRYPT_DECRYPT');
  const pem = await publicPem(key.KeyId);
  for (const md of ['sha1', 'sha256']) {
    const secret = crypto.randomBytes(32);
    const ct = openssl(['pkeyutl', '-encrypt', '-pubin', '-inkey', pem, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', `rsa_oaep_md:${md}`], {
      input: secret,
    }).stdout;
    t.same(await ks.decrypt(`kms:aws/${key.alias}`, { algorithm: 'rsa-oaep', digest: md, data: ct }), secret, `OAEP-${md} decrypts what openssl encrypted`);
  }
  const ct = crypto.publicEncrypt({ key: fs.readFileSync(pem), padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha512' }, Buffer.from('x'));
  await rejects(
    t,
    ks.decrypt(`kms:aws/${key.alias}`, { algorithm: 'rsa-oaep', digest: 'sha512', data: ct }),
    'UNSUPPORTED',
    /SHA-1 or SHA-256/,
    'OAEP-SHA-512',
  );
  await rejects(t, ks.decrypt(`kms:dec/${key.alias}`, { algorithm: 'rsa-pkcs1-decrypt', data: ct }), 'UNSUPPORTED', null, 'PKCS#1 v1.5 decryption');
  await rejects(
    t,
    backendFor(t).decrypt(key.alias, { algorithm: 'rsa-pkcs1-decrypt', data: ct }, new AbortController().signal),
    'UNSUPPORTED',
    /AWS KMS does not decrypt PKCS#1 v1.5/,
    'PKCS#1 v1.5 decryption (backend)',
  );
  await rejects(t, ks.sign(`kms:aws/${key.alias}`, signReq()), 'UNSUPPORTED', /rsa-oaep/, 'signing with an ENCRYPT_DECRYPT key');
});

t.test('AWS error types become kmsbridge errors that keep AWS message', async (t) => {
  const ks = keyService(t);
  await rejects(t, ks.describe('kms:aws/alias/does-not-exist'), 'NOT_FOUND', /Alias arn:aws:kms:.*alias\/does-not-exist is not found/, 'NotFoundException');

  const disabled = await makeKey('RSA_2048');
  await ks.describe(`kms:aws/${disabled.alias}`);
  await sdk.send(new DisableKeyCommand({ KeyId: disabled.KeyId }));
  await rejects(t, ks.sign(`kms:aws/${disabled.alias}`, signReq()), 'KEY_UNUSABLE', /is disabled/, 'DisabledException');

  const doomed = await makeKey('RSA_2048');
  await ks.describe(`kms:aws/${doomed.alias}`);
  await sdk.send(new ScheduleKeyDeletionCommand({ KeyId: doomed.KeyId, PendingWindowInDays: 7 }));
  await rejects(t, ks.sign(`kms:aws/${doomed.alias}`, signReq()), 'KEY_UNUSABLE', /pending deletion/, 'KMSInvalidStateException');

  const uri = `kms:aws/${rsa.alias}`;
  await ks.describe(uri);
  const injected = [
    ['AccessDeniedException', 'ACCESS_DENIED', 'User: arn:aws:iam::111122223333:user/app is not authorized to perform: kms:Sign'],
    ['InvalidKeyUsageException', 'UNSUPPORTED', 'The key usage does not allow this'],
    ['KMSInvalidStateException', 'KEY_UNUSABLE', 'the key is pending import'],
    ['NotFoundException', 'NOT_FOUND', 'Key gone'],
    ['DisabledException', 'KEY_UNUSABLE', 'Key disabled meanwhile'],
  ];
  for (const [type, code, msg] of injected) {
    await server.addFault({ operation: 'Sign', kind: 'error', type, message: msg });
    const err = await rejects(t, ks.sign(uri, signReq()), code, msg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), type);
    t.match(err?.message ?? '', type, `${type}: names the AWS error type`);
  }
  await server.addFault({ operation: 'Sign', kind: 'throttle', times: 0 });
  await rejects(t, keyService(t, { aws: { max_attempts: 2 } }).sign(uri, signReq()), 'THROTTLED', /Rate exceeded/, 'ThrottlingException');
  await server.clearFaults();
});

t.test('wrong credentials are refused as ACCESS_DENIED and never shown', async (t) => {
  const wrong = { AWS_ACCESS_KEY_ID: 'AKIAWRONGKEY00000000', AWS_SECRET_ACCESS_KEY: 'not-the-secret-0123456789abcdefghijklmnop' };
  const cbox = sandbox(t, { keyrings: { aws: { type: 'aws', region: server.region, endpoint: server.url, timeout_ms: 5000 } } });
  let r = cli(cbox, ['keys', 'export', `kms:aws/${rsa.alias}`], { env: { ...awsEnv(), ...wrong } });
  t.equal(r.status, 1);
  t.match(r.stderr, /UnrecognizedClientException/, `unknown access key: ${r.stderr.trim()}`);
  r = cli(cbox, ['keys', 'export', `kms:aws/${rsa.alias}`], { env: { ...awsEnv(), AWS_SECRET_ACCESS_KEY: wrong.AWS_SECRET_ACCESS_KEY } });
  t.equal(r.status, 1);
  t.match(r.stderr, /InvalidSignatureException/, `wrong secret: ${r.stderr.trim()}`);
  for (const secret of [wrong.AWS_SECRET_ACCESS_KEY, wrong.AWS_ACCESS_KEY_ID, TEST_CREDENTIALS.secretAccessKey])
    t.notMatch(r.stderr, secret, 'no credential in the message');

  const ks = keyService(t);
  const saved = { ...process.env };
  Object.assign(process.env, wrong);
  try {
    const err = await rejects(t, ks.describe(`kms:aws/${rsa.alias}`), 'ACCESS_DENIED', /UnrecognizedClientException/, 'in-process');
    t.notMatch(err?.message ?? '', /AKIAWRONGKEY/, 'the access key id is not in the message');
  } finally {
    Object.assign(process.env, saved);
  }
});

t.test('keys create makes an aliased key; list shows it; delete schedules deletion and frees the alias', async (t) => {
  const cbox = sandbox(t, { keyrings: { aws: { type: 'aws', region: server.region, endpoint: server.url, timeout_ms: 10000, pending_window_days: 7 } } });
  const env = awsEnv();
  const uri = cliOk(t, cbox, ['keys', 'create', 'web-tls', '--keyring', 'aws', '--type', 'ec-p256'], { env }).trim();
  t.equal(uri, 'kms:aws/alias/web-tls');
  const again = cli(cbox, ['keys', 'create', 'web-tls', '--keyring', 'aws', '--type', 'ec-p256'], { env });
  t.equal(again.status, 1);
  t.match(again.stderr, /already exists/, 'a second key of the same name is refused');
  const bad = cli(cbox, ['keys', 'create', 'has.dot', '--keyring', 'aws', '--type', 'ec-p256'], { env });
  t.match(bad.stderr, /cannot be an AWS KMS alias/, 'names AWS cannot alias are refused before anything is created');

  const list = cliOk(t, cbox, ['keys', 'list', '--keyring', 'aws'], { env });
  t.match(list, /^kms:aws\/alias\/web-tls\tec P-256$/m, 'list shows the key by its alias');
  t.match(list, new RegExp(`^kms:aws/${rsa.alias}\\trsa-2048$`, 'm'), 'and keys made elsewhere');

  const before = await sdk.send(new DescribeKeyCommand({ KeyId: 'alias/web-tls' }));
  cliOk(t, cbox, ['keys', 'delete', uri, '--yes'], { env });
  const after = await sdk.send(new DescribeKeyCommand({ KeyId: before.KeyMetadata.KeyId }));
  t.equal(after.KeyMetadata.KeyState, 'PendingDeletion', 'the key is scheduled for deletion');
  const days = (after.KeyMetadata.DeletionDate.getTime() - Date.now()) / 86400e3;
  t.ok(days > 6.9 && days <= 7, `after pending_window_days (${days.toFixed(2)} days)`);
  const aliases = await sdk.send(new ListAliasesCommand({}));
  t.notOk(
    aliases.Aliases.some((a) => a.AliasName === 'alias/web-tls'),
    'the alias is gone',
  );
  t.notMatch(cliOk(t, cbox, ['keys', 'list', '--keyring', 'aws'], { env }), /web-tls/, 'list no longer shows it');
  t.equal(cliOk(t, cbox, ['keys', 'create', 'web-tls', '--keyring', 'aws', '--type', 'rsa-2048'], { env }).trim(), uri, 'the name can be used again');
});

t.test('random bytes come from GenerateRandom, 1024 at a time', async (t) => {
  const ks = keyService(t);
  await server.reset();
  const bytes = await ks.random(3000, 'aws');
  t.equal(bytes.length, 3000);
  t.equal((await server.stats()).calls.GenerateRandom, 3);
});

t.test('the test double wants SigV4: unsigned and wrongly signed requests are refused', async (t) => {
  const r = await fetch(server.url, {
    method: 'POST',
    headers: { 'X-Amz-Target': 'TrentService.ListKeys', 'Content-Type': 'application/x-amz-json-1.1' },
    body: '{}',
  });
  t.equal(r.status, 400);
  t.equal((await r.json()).__type, 'MissingAuthenticationTokenException');
  const { KMSClient, ListKeysCommand } = await import('@aws-sdk/client-kms');
  const other = new KMSClient({ region: 'us-west-2', endpoint: server.url, credentials: TEST_CREDENTIALS, maxAttempts: 1 });
  t.teardown(() => other.destroy());
  await t.rejects(other.send(new ListKeysCommand({})), { name: 'InvalidSignatureException' }, 'a signature for another region');
});

t.test('the system openssl signs with AWS KMS keys through the kmsbridge provider (first door)', async (t) => {
  const { FLAGS, missing } = await import('./provider-harness.mjs');
  const why = missing();
  if (why) return t.skip(why);
  const pbox = sandbox(t, { keyrings: { aws: { type: 'aws', region: server.region, endpoint: server.url, timeout_ms: 10000 } } });
  Object.assign(pbox.env, awsEnv(), { OPENSSL_CONF: '/dev/null' });
  await startAgent(t, pbox);
  const run = (args) => openssl(args, { env: pbox.env, cwd: pbox.dir });
  const ec = cliOk(t, pbox, ['keys', 'create', 'door-ec', '--keyring', 'aws', '--type', 'ec-p256']).trim();
  const rsaUri = cliOk(t, pbox, ['keys', 'create', 'door-rsa', '--keyring', 'aws', '--type', 'rsa-2048']).trim();
  const ecPem = await publicPem('alias/door-ec');
  const rsaPem2 = await publicPem('alias/door-rsa');
  fs.writeFileSync(pbox.file('msg'), message);
  fs.writeFileSync(pbox.file('msg.sha256'), sha256(message));

  let r = run(['pkeyutl', '-sign', ...FLAGS, '-inkey', ec, '-in', pbox.file('msg.sha256'), '-out', pbox.file('ec.sig')]);
  t.equal(r.status, 0, `pkeyutl -sign with ${ec}: ${r.stderr}`);
  r = run(['pkeyutl', '-verify', '-pubin', '-inkey', ecPem, '-in', pbox.file('msg.sha256'), '-sigfile', pbox.file('ec.sig')]);
  t.equal(r.status, 0, 'openssl verifies it with the GetPublicKey key');

  r = run(['req', '-x509', '-new', ...FLAGS, '-key', rsaUri, '-subj', '/CN=aws door', '-days', '1', '-sha256', '-out', pbox.file('cert.pem')]);
  t.equal(r.status, 0, `req -x509 with ${rsaUri}: ${r.stderr}`);
  r = run(['verify', '-CAfile', pbox.file('cert.pem'), pbox.file('cert.pem')]);
  t.equal(r.status, 0, `the self-signed certificate verifies: ${r.stdout}${r.stderr}`);
  const certPub = run(['x509', '-in', pbox.file('cert.pem'), '-noout', '-pubkey']).stdout.toString();
  t.equal(certPub, fs.readFileSync(rsaPem2, 'utf8'), 'and carries the key AWS KMS holds');

  r = run([
    'dgst',
    '-sha384',
    '-sign',
    rsaUri,
    ...FLAGS,
    '-sigopt',
    'rsa_padding_mode:pss',
    '-sigopt',
    'rsa_pss_saltlen:digest',
    '-out',
    pbox.file('pss.sig'),
    pbox.file('msg'),
  ]);
  t.equal(r.status, 0, `dgst -sha384 PSS (salt = digest length): ${r.stderr}`);
  r = run([
    'dgst',
    '-sha384',
    '-verify',
    rsaPem2,
    '-sigopt',
    'rsa_padding_mode:pss',
    '-sigopt',
    'rsa_pss_saltlen:digest',
    '-signature',
    pbox.file('pss.sig'),
    pbox.file('msg'),
  ]);
  t.equal(r.status, 0, `verifies: ${r.stdout}${r.stderr}`);
});
