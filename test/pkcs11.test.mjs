// The PKCS#11 backend on a real SoftHSM2 token: keys made by pkcs11-tool and
// by kmsbridge, the PIN handled so a token is never walked into lockout, the
// failures a user meets (wrong library, token, key, mechanism), concurrent
// signers through the session pool, and `kmsbridge doctor`. Signatures are
// checked by the system openssl with public keys pkcs11-tool read; the PIN
// attempts are counted by OpenSC's pkcs11-spy, never by kmsbridge itself.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { sandbox, startAgent, cli, cliOk, openssl, opensslOk } from './lib/env.mjs';
import { SOFTHSM_LIB, PKCS11_SPY, makeToken, p11toolOk, readPublicKeyPem } from './lib/softhsm.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

const token = makeToken(t, { label: 'kmsbridge-p11' });
const hsm = (extra = {}) => ({ type: 'pkcs11', library: SOFTHSM_LIB, token_label: token.label, pin_env: 'KMSBRIDGE_TEST_HSM_PIN', ...extra });
const message = Buffer.from('signed inside a SoftHSM2 token\n');

async function agentFor(t, keyrings, env = {}) {
  const box = sandbox(t, { keyrings });
  Object.assign(box.env, token.env, { KMSBRIDGE_TEST_HSM_PIN: token.pin }, env);
  const agent = await startAgent(t, box);
  const client = await AgentClient.connect(box.socket, { timeoutMs: 60_000 });
  t.teardown(() => client.close());
  fs.writeFileSync(box.file('msg'), message);
  return { box, agent, client };
}

function sign(client, uri, alg, digest, data = message) {
  const fields = [
    { tag: Tag.URI, value: uri },
    { tag: Tag.ALGORITHM, value: alg },
  ];
  if (digest) fields.push({ tag: Tag.DIGEST, value: digest });
  if (alg === 'rsa-pss') fields.push({ tag: Tag.SALT_LENGTH, value: 32 });
  fields.push({ tag: Tag.DATA, value: digest ? crypto.createHash(digest).update(data).digest() : data });
  return client.request(MsgType.SIGN, fields).then((f) => f.requireBytes(Tag.RESULT));
}

/** openssl verifies `sig` over the message with the PEM public key `pub`. */
function verify(t, box, pub, sig, digest, opts = [], what = 'openssl verifies') {
  const n = crypto.randomBytes(4).toString('hex');
  fs.writeFileSync(box.file(`sig-${n}`), sig);
  fs.writeFileSync(box.file(`in-${n}`), digest ? crypto.createHash(digest).update(message).digest() : message);
  const args = digest
    ? ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-in', box.file(`in-${n}`), '-sigfile', box.file(`sig-${n}`), '-pkeyopt', `digest:${digest}`, ...opts]
    : ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', box.file(`in-${n}`), '-sigfile', box.file(`sig-${n}`)];
  const r = openssl(args);
  t.equal(r.status, 0, `${what}: ${r.stderr.trim() || r.stdout.toString().trim()}`);
}

/** How many times pkcs11-spy logged a call to `fn` (its log has a `<n>: C_Login` line per call). */
const spyCalls = (log, fn) =>
  fs.existsSync(log)
    ? fs
        .readFileSync(log, 'latin1')
        .split('\n')
        .filter((l) => new RegExp(`^\\d+: ${fn}$`).test(l)).length
    : 0;

/** The most sessions open at once in a pkcs11-spy log (a session counts from C_OpenSession's return to C_CloseSession's call). */
function mostSessionsOpen(log) {
  const open = new Set();
  let most = 0;
  let pending;
  for (const line of fs.readFileSync(log, 'latin1').split('\n')) {
    const call = /^\d+: (C_\w+)$/.exec(line);
    if (call) pending = call[1];
    const opened = /^\[out\] \*phSession = (\w+)/.exec(line);
    if (opened && pending === 'C_OpenSession') open.add(opened[1]);
    const closed = /^\[in\] hSession = (\w+)/.exec(line);
    if (closed && pending === 'C_CloseSession') open.delete(closed[1]);
    most = Math.max(most, open.size);
  }
  return most;
}

t.test('keys made by pkcs11-tool are usable by id, by label and by both', async (t) => {
  p11toolOk(t, token, ['--keypairgen', '--key-type', 'EC:prime256v1', '--id', '0a', '--label', 'tool-ec']);
  p11toolOk(t, token, ['--keypairgen', '--key-type', 'rsa:2048', '--id', '0b', '--label', 'tool-rsa']);
  const { box, client } = await agentFor(t, { hsm: hsm() });
  const ecPub = box.file('tool-ec.pem');
  const rsaPub = box.file('tool-rsa.pem');
  readPublicKeyPem(t, token, 'kms:hsm/id=0a', ecPub);
  readPublicKeyPem(t, token, 'kms:hsm/id=0b', rsaPub);
  for (const uri of ['kms:hsm/id=0a', 'kms:hsm/label=tool-ec', 'kms:hsm/id=%0a;label=tool-ec', 'kms:hsm/pkcs11:object=tool-ec;type=private']) {
    verify(t, box, ecPub, await sign(client, uri, 'ecdsa', 'sha256'), 'sha256', [], `ECDSA through ${uri}`);
  }
  for (const uri of ['kms:hsm/id=0b', 'kms:hsm/label=tool-rsa']) {
    verify(t, box, rsaPub, await sign(client, uri, 'rsa-pkcs1', 'sha256'), 'sha256', [], `RSA PKCS#1 v1.5 through ${uri}`);
    verify(
      t,
      box,
      rsaPub,
      await sign(client, uri, 'rsa-pss', 'sha256'),
      'sha256',
      ['-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', 'rsa_pss_saltlen:32'],
      `RSA-PSS through ${uri}`,
    );
  }
  const list = cliOk(t, box, ['keys', 'list', '--keyring', 'hsm']);
  t.match(list, /kms:hsm\/label=tool-ec\tec P-256/);
  t.match(list, /kms:hsm\/label=tool-rsa\trsa-2048/);
});

t.test('keys made by kmsbridge are on the token, sensitive and non-extractable, as pkcs11-tool sees them', async (t) => {
  const { box, client } = await agentFor(t, { hsm: hsm() });
  for (const [name, spec] of [
    ['made-ec', 'ec-p256'],
    ['made-rsa', 'rsa-2048'],
    ['made-ed', 'ed25519'],
  ]) {
    const uri = cliOk(t, box, ['keys', 'create', name, '--keyring', 'hsm', '--type', spec]).trim();
    t.equal(uri, `kms:hsm/label=${name}`);
    const listing = p11toolOk(t, token, ['--list-objects', '--type', 'privkey']).toString();
    const block = listing.split(/^(?=Private Key Object)/m).find((b) => b.includes(`label:      ${name}\n`));
    t.ok(block, `pkcs11-tool lists the private key '${name}'`);
    t.match(block, /Access:\s+sensitive, always sensitive, never extractable, local/, `${name}: sensitive, never extractable, generated on the token`);
    t.match(block, /ID:\s+[0-9a-f]{32}\n/, `${name}: a fresh 16-byte CKA_ID`);
    const pub = box.file(`${name}.pem`);
    readPublicKeyPem(t, token, uri, pub);
    const alg = spec === 'ed25519' ? 'ed25519' : spec.startsWith('ec') ? 'ecdsa' : 'rsa-pkcs1';
    const digest = spec === 'ed25519' ? undefined : 'sha256';
    verify(t, box, pub, await sign(client, uri, alg, digest), digest, [], `${spec} signature verifies with the key pkcs11-tool read`);
  }
  const again = cli(box, ['keys', 'create', 'made-ec', '--keyring', 'hsm', '--type', 'ec-p256']);
  t.equal(again.status, 1);
  t.match(again.stderr, /a private key labelled 'made-ec' already exists on token 'kmsbridge-p11'/);
});

t.test(
  'a wrong PIN is tried once, never again, and the token works with the right PIN afterwards',
  { skip: !PKCS11_SPY && 'OpenSC pkcs11-spy is not installed' },
  async (t) => {
    const scratch = sandbox(t);
    const pinFile = scratch.file('hsm.pin');
    fs.writeFileSync(pinFile, '999999\n', { mode: 0o600 });
    const spyLog = scratch.file('spy.log');
    const keyring = { type: 'pkcs11', library: PKCS11_SPY, token_label: token.label, pin_file: pinFile };
    const { client, agent, box: b2 } = await agentFor(t, { hsm: keyring }, { PKCS11SPY: SOFTHSM_LIB, PKCS11SPY_OUTPUT: spyLog });
    p11toolOk(t, token, ['--keypairgen', '--key-type', 'EC:prime256v1', '--id', '0c', '--label', 'pin-test']);

    const attempts = [
      sign(client, 'kms:hsm/label=pin-test', 'ecdsa', 'sha256'),
      sign(client, 'kms:hsm/label=pin-test', 'ecdsa', 'sha256'),
      sign(client, 'kms:hsm/id=0c', 'ecdsa', 'sha256'),
    ];
    for (const a of attempts) {
      await t.rejects(a, { codeName: 'ACCESS_DENIED', message: /token 'kmsbridge-p11' rejected the PIN from pin_file .*hsm\.pin/ });
    }
    await t.rejects(sign(client, 'kms:hsm/label=pin-test', 'ecdsa', 'sha256'), {
      codeName: 'ACCESS_DENIED',
      message: /does not try a rejected PIN again.*read again at the next request/,
    });
    t.equal(spyCalls(spyLog, 'C_Login'), 1, 'pkcs11-spy saw exactly one C_Login for four requests');
    t.notMatch(agent.log(), /999999|246810/, 'no PIN in the agent log');
    t.notMatch(fs.readFileSync(b2.file('audit.log'), 'utf8'), /999999|246810/, 'no PIN in the audit log');

    // The token is not locked: pkcs11-tool logs in with the right PIN, and so does the agent once the file is fixed.
    p11toolOk(t, token, ['--list-objects', '--type', 'privkey']);
    fs.writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 });
    const pub = b2.file('pin-test.pem');
    readPublicKeyPem(t, token, 'kms:hsm/id=0c', pub);
    verify(t, b2, pub, await sign(client, 'kms:hsm/label=pin-test', 'ecdsa', 'sha256'), 'sha256', [], 'signs once the PIN file is right');
    t.equal(spyCalls(spyLog, 'C_Login'), 2, 'one more C_Login, with the corrected PIN');
  },
);

t.test('a PIN file other users can read is refused before any login', async (t) => {
  const box = sandbox(t);
  const pinFile = box.file('open.pin');
  fs.writeFileSync(pinFile, token.pin);
  fs.chmodSync(pinFile, 0o644);
  const { client } = await agentFor(t, { hsm: { type: 'pkcs11', library: SOFTHSM_LIB, token_label: token.label, pin_file: pinFile } });
  await t.rejects(client.request(MsgType.LIST, [{ tag: Tag.KEYRING, value: 'hsm' }]), {
    codeName: 'ACCESS_DENIED',
    message: new RegExp(`pin_file ${pinFile} has mode 0644, readable by other users; run: chmod 600`),
  });
});

t.test('a PIN written in the config works and is warned about loudly at start', async (t) => {
  const box = sandbox(t, { keyrings: { hsm: { type: 'pkcs11', library: SOFTHSM_LIB, token_label: token.label, pin: token.pin } } });
  Object.assign(box.env, token.env);
  const r = cli(box, ['keys', 'list', '--keyring', 'hsm']);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stderr, /WARNING: keyring 'hsm' has its PKCS#11 PIN written in the config file/);
  t.notMatch(r.stderr, token.pin);
});

t.test('a wrong library path says which file and what to check', async (t) => {
  const box = sandbox(t, {
    keyrings: {
      missing: { type: 'pkcs11', library: '/usr/lib/nowhere/libnohsm.so', token_label: 'x', pin_env: 'KMSBRIDGE_TEST_HSM_PIN' },
      notpkcs11: { type: 'pkcs11', library: '/etc/hostname', token_label: 'x', pin_env: 'KMSBRIDGE_TEST_HSM_PIN' },
    },
  });
  let r = cli(box, ['keys', 'list', '--keyring', 'missing']);
  t.equal(r.status, 1);
  t.match(r.stderr, /PKCS#11 library \/usr\/lib\/nowhere\/libnohsm\.so of keyring 'missing' does not exist; check library in \[keyrings\.missing\]/);
  r = cli(box, ['keys', 'list', '--keyring', 'notpkcs11']);
  t.equal(r.status, 1);
  t.match(r.stderr, /PKCS#11 library \/etc\/hostname of keyring 'notpkcs11' cannot be loaded: .*; check that it is a PKCS#11 module/);
});

t.test('a wrong token label lists the tokens the library sees', async (t) => {
  const { client } = await agentFor(t, { hsm: hsm({ token_label: 'prod' }) });
  await t.rejects(client.request(MsgType.LIST, [{ tag: Tag.KEYRING, value: 'hsm' }]), {
    codeName: 'BACKEND_UNAVAILABLE',
    message:
      /token 'prod' of keyring 'hsm' not found through library .*libsofthsm2\.so; tokens seen: 'kmsbridge-p11' \(slot \d+, serial [0-9a-f]+, SoftHSM v2\)(, an uninitialized token \(slot \d+\))?; check token_label in \[keyrings\.hsm\]/,
  });
});

t.test('a key-id that matches nothing lists the private keys on the token', async (t) => {
  p11toolOk(t, token, ['--keypairgen', '--key-type', 'EC:prime256v1', '--id', '0d', '--label', 'listed']);
  const { client } = await agentFor(t, { hsm: hsm() });
  await t.rejects(sign(client, 'kms:hsm/label=nope', 'ecdsa', 'sha256'), {
    codeName: 'NOT_FOUND',
    message:
      /key kms:hsm\/label=nope not found: no private key with CKA_LABEL 'nope' on token 'kmsbridge-p11'; private keys on the token: .*label=listed \(ec P-256\)/,
  });
  await t.rejects(sign(client, 'kms:hsm/id=zz', 'ecdsa', 'sha256'), { codeName: 'NOT_FOUND' });
  await t.rejects(sign(client, 'kms:hsm/colour=blue', 'ecdsa', 'sha256'), {
    codeName: 'BAD_REQUEST',
    message: /attribute 'colour' is not supported; use id=<hex>, label=<name>/,
  });
});

t.test('decryption: OAEP on the token, PKCS#1 v1.5 only where the keyring allows it, clear errors for what the token lacks', async (t) => {
  const { box, client } = await agentFor(t, { hsm: hsm(), legacy: hsm({ allow_pkcs1_decrypt: true }) });
  const uri = cliOk(t, box, ['keys', 'create', 'dec', '--keyring', 'hsm', '--type', 'rsa-2048']).trim();
  const pub = box.file('dec.pem');
  readPublicKeyPem(t, token, uri, pub);
  const secret = crypto.randomBytes(32);
  const decrypt = (u, alg, digest, ct) =>
    client
      .request(MsgType.DECRYPT, [
        { tag: Tag.URI, value: u },
        { tag: Tag.ALGORITHM, value: alg },
        ...(digest ? [{ tag: Tag.DIGEST, value: digest }] : []),
        { tag: Tag.DATA, value: ct },
      ])
      .then((f) => f.requireBytes(Tag.RESULT));
  const oaep1 = opensslOk(t, ['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha1'], {
    input: secret,
  });
  t.same(await decrypt(uri, 'rsa-oaep', 'sha1', oaep1), secret, 'OAEP-SHA-1 decrypts what openssl encrypted');
  const oaep256 = opensslOk(t, ['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256'], {
    input: secret,
  });
  await t.rejects(decrypt(uri, 'rsa-oaep', 'sha256', oaep256), {
    codeName: 'UNSUPPORTED',
    message: /token 'kmsbridge-p11' refuses OAEP with sha256, MGF1-sha256 \(CKR_ARGUMENTS_BAD\)/,
  });
  const v15 = opensslOk(t, ['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-pkeyopt', 'rsa_padding_mode:pkcs1'], { input: secret });
  await t.rejects(decrypt(uri, 'rsa-pkcs1-decrypt', undefined, v15), {
    codeName: 'UNSUPPORTED',
    message: /PKCS#1 v1\.5 decryption is disabled for keyring 'hsm'/,
  });
  t.same(await decrypt('kms:legacy/label=dec', 'rsa-pkcs1-decrypt', undefined, v15), secret, 'PKCS#1 v1.5 decrypts where allow_pkcs1_decrypt is set');
});

t.test("a key replaced behind the agent's back is looked up again: gone is NOT_FOUND, a new one under the label is used", async (t) => {
  const { box, client } = await agentFor(t, { hsm: hsm() });
  p11toolOk(t, token, ['--keypairgen', '--key-type', 'EC:prime256v1', '--id', '0f', '--label', 'replaced']);
  await sign(client, 'kms:hsm/label=replaced', 'ecdsa', 'sha256');
  p11toolOk(t, token, ['--delete-object', '--type', 'privkey', '--id', '0f']);
  p11toolOk(t, token, ['--delete-object', '--type', 'pubkey', '--id', '0f']);
  await t.rejects(sign(client, 'kms:hsm/label=replaced', 'ecdsa', 'sha256'), { codeName: 'NOT_FOUND', message: /no private key with CKA_LABEL 'replaced'/ });
  p11toolOk(t, token, ['--keypairgen', '--key-type', 'EC:prime256v1', '--id', '10', '--label', 'replaced2']);
  const pub = box.file('replaced2.pem');
  readPublicKeyPem(t, token, 'kms:hsm/id=10', pub);
  verify(t, box, pub, await sign(client, 'kms:hsm/label=replaced2', 'ecdsa', 'sha256'), 'sha256', [], 'the new key signs');
});

t.test('16 concurrent signers through the agent share a pool of 4 sessions and all verify', async (t) => {
  // Through pkcs11-spy, which counts the sessions the agent opens.
  const spyLog = sandbox(t).file('spy.log');
  const keyring = PKCS11_SPY ? hsm({ max_sessions: 4, library: PKCS11_SPY }) : hsm({ max_sessions: 4 });
  const { box } = await agentFor(t, { hsm: keyring }, { PKCS11SPY: SOFTHSM_LIB, PKCS11SPY_OUTPUT: spyLog });
  const ec = cliOk(t, box, ['keys', 'create', 'busy-ec', '--keyring', 'hsm', '--type', 'ec-p256']).trim();
  const rsa = cliOk(t, box, ['keys', 'create', 'busy-rsa', '--keyring', 'hsm', '--type', 'rsa-2048']).trim();
  const ecPub = box.file('busy-ec.pem');
  const rsaPub = box.file('busy-rsa.pem');
  readPublicKeyPem(t, token, ec, ecPub);
  readPublicKeyPem(t, token, rsa, rsaPub);
  const signers = Array.from({ length: 16 }, async (_, i) => {
    const c = await AgentClient.connect(box.socket, { timeoutMs: 60_000 });
    try {
      const out = [];
      for (let j = 0; j < 4; j++) {
        const useEc = (i + j) % 2 === 0;
        out.push({ pub: useEc ? ecPub : rsaPub, sig: await sign(c, useEc ? ec : rsa, useEc ? 'ecdsa' : 'rsa-pkcs1', 'sha256') });
      }
      return out;
    } finally {
      c.close();
    }
  });
  const results = (await Promise.all(signers)).flat();
  t.equal(results.length, 64);
  let verified = 0;
  for (const { pub, sig } of results) {
    fs.writeFileSync(box.file('c-sig'), sig);
    fs.writeFileSync(box.file('c-in'), crypto.createHash('sha256').update(message).digest());
    if (
      openssl(['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-in', box.file('c-in'), '-sigfile', box.file('c-sig'), '-pkeyopt', 'digest:sha256']).status === 0
    )
      verified++;
  }
  t.equal(verified, 64, 'openssl verifies all 64 signatures from 16 concurrent signers');
  if (PKCS11_SPY) {
    // The agent's serving threads sign granted requests on sessions of their own, left to them out of max_sessions.
    const most = mostSessionsOpen(spyLog);
    t.ok(most >= 1 && most <= 4, `pkcs11-spy saw at most ${most} sessions open at once: never more than max_sessions`);
    t.equal(spyCalls(spyLog, 'C_Login'), 1, 'one login for the whole token');
  }
});

t.test('kmsbridge doctor shows the library, slots, tokens and key objects', async (t) => {
  const box = sandbox(t, { keyrings: { hsm: hsm(), local: { type: 'local' } } });
  Object.assign(box.env, token.env, { KMSBRIDGE_TEST_HSM_PIN: token.pin });
  p11toolOk(t, token, ['--keypairgen', '--key-type', 'EC:prime256v1', '--id', '0e', '--label', 'doctor-me']);
  const out = cliOk(t, box, ['doctor']);
  t.match(out, /keyring hsm \(pkcs11\)/);
  t.match(out, /library:\s+\/usr\/lib\/softhsm\/libsofthsm2\.so \(Implementation of PKCS11 2\.6/);
  t.match(out, /slot \d+: .*token 'kmsbridge-p11'/);
  t.match(out, /private key\s+label=doctor-me\s+ec P-256\s+id 0e\s+sensitive, always sensitive, non-extractable, never extractable, private/);
  t.match(out, /public key\s+doctor-me\s+id 0e/);
  t.match(out, /CKM_ECDSA\s+offered/);
  t.match(out, /keyring local \(local\)/);
  t.match(out, /store:\s+/);
  t.notMatch(out, token.pin);
});
