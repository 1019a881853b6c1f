// Failure paths: each is a clear error and a non-zero exit, never a crash or
// a hang; and the provider recovers when the agent comes back.
import t from 'tap';
import fs from 'node:fs';
import { FLAGS, MODULES, missing, openssl, setup } from './provider-harness.mjs';

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  fs.writeFileSync(f('msg.txt'), 'x');
  openssl(ctx, ['dgst', '-sha256', '-binary', '-out', f('msg.sha256'), f('msg.txt')]);
  const sign = (key, extra = [], env = ctx.env) =>
    openssl(ctx, ['pkeyutl', '-sign', ...FLAGS, '-inkey', key, '-in', f('msg.sha256'), '-out', f('out.sig'), ...extra], { env, timeout: 20000 });

  t.test('an unknown key names the URI', async (t) => {
    const r = sign('kms:local/nope');
    t.not(r.status, 0);
    t.match(r.stderr, /kmsbridge:.*key not found.*kms:local\/nope/);
  });

  t.test('a malformed URI is refused before any request', async (t) => {
    const r = sign('kms:local/');
    t.not(r.status, 0);
  });

  t.test('SHA-1 is refused for a key whose keyring does not allow it', async (t) => {
    openssl(ctx, ['dgst', '-sha1', '-binary', '-out', f('msg.sha1'), f('msg.txt')]);
    const r = openssl(ctx, ['pkeyutl', '-sign', ...FLAGS, '-inkey', 'kms:local/web', '-in', f('msg.sha1'), '-out', f('sha1.sig'),
      '-pkeyopt', 'digest:sha1']);
    t.not(r.status, 0);
    t.match(r.stderr, /kmsbridge:.*sha1/i);
  });

  t.test('the private key cannot be exported: text dumps and traditional PEM are refused, -out writes only the reference', async (t) => {
    const text = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web', '-text', '-noout']);
    t.not(text.status, 0);
    t.match(text.stderr, /private key export refused.*stays in the key manager/);
    const trad = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/rsa', '-traditional']);
    t.not(trad.status, 0);
    t.match(trad.stderr, /private key export refused/);
    t.notMatch(trad.stdout, /BEGIN/);
    const ref = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web']);
    t.equal(ref.status, 0, ref.stderr);
    t.match(ref.stdout, /^kmsbridge key reference: kms:local\/web\n[^]*-----BEGIN KMSBRIDGE KEY URI-----/);
    t.notMatch(ref.stdout, /PRIVATE KEY/);
    const pub = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web', '-pubout']);
    t.equal(pub.status, 0, pub.stderr);
    t.equal(pub.stdout, fs.readFileSync(f('web.pub.pem'), 'utf8'));
  });

  t.test('with kmsbridge loaded before default, signing still works', async (t) => {
    const r = openssl(ctx, ['pkeyutl', '-sign', '-provider-path', MODULES, '-provider', 'kmsbridge', '-provider', 'default',
      '-inkey', 'kms:local/rsa', '-in', f('msg.sha256'), '-out', f('rsa.sig'), '-pkeyopt', 'digest:sha256']);
    t.equal(r.status, 0, r.stderr);
    const v = openssl(ctx, ['pkeyutl', '-verify', '-pubin', '-inkey', f('rsa.pub.pem'), '-in', f('msg.sha256'), '-sigfile', f('rsa.sig'),
      '-pkeyopt', 'digest:sha256']);
    t.equal(v.status, 0, v.stdout + v.stderr);
  });

  t.test('no agent: a clear error naming the socket and `kmsbridge agent`; then recovery', async (t) => {
    await ctx.stopAgent();
    const started = Date.now();
    const r = sign('kms:local/web');
    t.not(r.status, 0);
    t.ok(Date.now() - started < 10000, 'fails fast');
    t.match(r.stderr, /agent not running/);
    t.match(r.stderr, ctx.sock);
    t.match(r.stderr, /kmsbridge agent/);
    await ctx.startAgent();
    const again = sign('kms:local/web');
    t.equal(again.status, 0, `works once the agent is back: ${again.stderr}`);
  });

  t.test('KMSBRIDGE_AGENT_SOCK overrides the openssl.cnf socket', async (t) => {
    const env = { ...ctx.env, OPENSSL_CONF: ctx.conf, KMSBRIDGE_AGENT_SOCK: f('elsewhere.sock') };
    const r = openssl(ctx, ['pkeyutl', '-sign', '-inkey', 'kms:local/web', '-in', f('msg.sha256'), '-out', f('x.sig')], { env });
    t.not(r.status, 0);
    t.match(r.stderr, /elsewhere\.sock/);
  });
}
