// ENGINE failure paths: each is a clear "kmsbridge:" error and a non-zero
// exit, never a crash or a hang; and the engine recovers when the agent
// comes back.
import t from 'tap';
import fs from 'node:fs';
import { ENGINE, auditRecords, missing, openssl, setup } from './engine-harness.mjs';

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  fs.writeFileSync(f('msg.txt'), 'x');
  for (const md of ['sha1', 'sha256']) openssl(ctx, ['dgst', `-${md}`, '-binary', '-out', f(`msg.${md}`), f('msg.txt')]);
  const sign = (key, extra = [], env = ctx.env) =>
    openssl(ctx, ['pkeyutl', '-sign', ...ENGINE, '-keyform', 'engine', '-inkey', key, '-in', f('msg.sha256'), '-out', f('out.sig'), ...extra], {
      env,
      timeout: 20000,
    });
  const crashed = (r) => r.signal !== null || r.status > 1;

  t.test('an unknown key names the URI and how to list keys', async (t) => {
    const r = sign('kms:local/nope');
    t.equal(r.status, 1, r.stderr);
    t.match(r.stderr, /kmsbridge engine:.*key not found.*kmsbridge: key 'nope' not found.*kms:local\/nope/);
  });

  t.test('a malformed URI is refused before any request', async (t) => {
    const before = auditRecords(ctx).length;
    for (const bad of ['kms:local/', 'local/web', 'kms:/web']) {
      const r = sign(bad);
      t.equal(r.status, 1, `${bad}: ${r.stderr}`);
      t.match(r.stderr, /malformed key URI.*kms:<keyring>\/<key-id>/, bad);
    }
    t.equal(auditRecords(ctx).length, before, 'the agent saw nothing');
  });

  t.test('SHA-1 is refused for ECDSA and RSA keys of a keyring that does not allow it', async (t) => {
    for (const key of ['web', 'rsa']) {
      const r = openssl(ctx, [
        'pkeyutl',
        '-sign',
        ...ENGINE,
        '-keyform',
        'engine',
        '-inkey',
        `kms:local/${key}`,
        '-in',
        f('msg.sha1'),
        '-out',
        f('sha1.sig'),
        '-pkeyopt',
        'digest:sha1',
      ]);
      t.equal(r.status, 1, r.stderr);
      t.match(r.stderr, /kmsbridge: SHA-1 signatures are refused for keyring 'local'/, key);
    }
  });

  t.test('raw RSA is refused: key managers sign digests', async (t) => {
    const r = sign('kms:local/rsa', ['-pkeyopt', 'rsa_padding_mode:none']);
    t.equal(r.status, 1, r.stderr);
    t.match(r.stderr, /padding none \(raw RSA\).*do not offer raw RSA/);
  });

  t.test('PKCS#1 v1.5 decryption is refused where the keyring does not allow it', async (t) => {
    const ct = openssl(ctx, ['pkeyutl', '-encrypt', '-pubin', '-inkey', f('rsa.pub.pem'), '-in', f('msg.txt'), '-out', f('pkcs1.bin')]);
    t.equal(ct.status, 0, ct.stderr);
    const r = openssl(ctx, ['pkeyutl', '-decrypt', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-in', f('pkcs1.bin')]);
    t.equal(r.status, 1, r.stderr);
    t.match(r.stderr, /key kms:local\/rsa does not allow rsa-pkcs1-decrypt/);
  });

  t.test('KMSBRIDGE_REMOTE_PUBKEY=1: raw RSA verify and encrypt are refused by name (key managers offer neither)', async (t) => {
    sign('kms:local/rsa', ['-pkeyopt', 'digest:sha256']);
    const env = { ...ctx.env, KMSBRIDGE_REMOTE_PUBKEY: '1' };
    const before = auditRecords(ctx).filter((r) => r.op === 'verify' || r.op === 'encrypt').length;
    for (const [op, args, message] of [
      [
        'verify',
        ['-verify', '-in', f('msg.sha256'), '-sigfile', f('out.sig')],
        /RSA signature padding none \(raw RSA\): kmsbridge verifies PKCS#1 v1\.5 and PSS/,
      ],
      [
        'encrypt',
        ['-encrypt', '-in', f('msg.txt'), '-out', f('enc.bin')],
        /RSA encryption padding none \(raw RSA\): kmsbridge does OAEP and PKCS#1 v1\.5 with the key manager/,
      ],
    ]) {
      const r = openssl(ctx, ['pkeyutl', ...args, ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-pkeyopt', 'rsa_padding_mode:none'], { env });
      t.not(r.status, 0, `${op}: ${r.stdout}`);
      t.notOk(crashed(r), `${op} did not crash`);
      t.match(r.stderr, message, op);
    }
    t.equal(auditRecords(ctx).filter((r) => r.op === 'verify' || r.op === 'encrypt').length, before, 'nothing was sent');
  });

  t.test('the private key cannot be exported; the public key can', async (t) => {
    const priv = openssl(ctx, ['pkey', ...ENGINE, '-inform', 'engine', '-in', 'kms:local/web']);
    t.not(priv.status, 0);
    t.notMatch(priv.stdout, /PRIVATE KEY/);
    const pub = openssl(ctx, ['pkey', ...ENGINE, '-inform', 'engine', '-in', 'kms:local/web', '-pubout']);
    t.equal(pub.status, 0, pub.stderr);
    t.equal(pub.stdout, fs.readFileSync(f('web.pub.pem'), 'utf8'));
  });

  t.test('no agent: a clear error naming the socket and `kmsbridge agent`; then recovery', async (t) => {
    await ctx.stopAgent();
    const started = Date.now();
    const r = sign('kms:local/web');
    t.equal(r.status, 1, r.stderr);
    t.ok(Date.now() - started < 10000, 'fails fast');
    t.match(r.stderr, /agent not running/);
    t.match(r.stderr, ctx.sock);
    t.match(r.stderr, /kmsbridge agent/);
    await ctx.startAgent();
    const again = sign('kms:local/web');
    t.equal(again.status, 0, `works once the agent is back: ${again.stderr}`);
  });

  t.test('AGENT_SOCKET from the engine section is used; KMSBRIDGE_AGENT_SOCK wins over it', async (t) => {
    const env = { ...ctx.env, OPENSSL_CONF: ctx.conf };
    delete env.KMSBRIDGE_AGENT_SOCK;
    const args = ['pkeyutl', '-sign', '-engine', 'kmsbridge', '-keyform', 'engine', '-inkey', 'kms:local/web', '-in', f('msg.sha256'), '-out', f('c.sig')];
    const fromConf = openssl(ctx, args, { env });
    t.equal(fromConf.status, 0, fromConf.stderr);
    const elsewhere = openssl(ctx, args, {
      env: { ...env, KMSBRIDGE_AGENT_SOCK: f('elsewhere.sock') },
    });
    t.equal(elsewhere.status, 1);
    t.match(elsewhere.stderr, /elsewhere\.sock/);
  });
}
