// The ENGINE kmsbridge through the system openssl: pkeyutl sign, verify,
// decrypt and encrypt with `-engine ... -keyform engine`, every result
// checked by plain openssl with the public key the CLI exports; the engine's
// listing; and random bytes from the key manager when asked for.
import t from 'tap';
import fs from 'node:fs';
import { ENGINE, MODULE, auditRecords, missing, openssl, setup, ways } from './engine-harness.mjs';

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  fs.writeFileSync(f('msg.txt'), 'the quick brown fox\n');
  for (const md of ['sha256', 'sha384']) openssl(ctx, ['dgst', `-${md}`, '-binary', '-out', f(`msg.${md}`), f('msg.txt')]);
  const plainVerify = (name, sig, md, opts = []) =>
    openssl(ctx, ['pkeyutl', '-verify', '-pubin', '-inkey', f(`${name}.pub.pem`), '-in', f(`msg.${md}`), '-sigfile', sig, '-pkeyopt', `digest:${md}`, ...opts]);

  t.test('openssl engine -t -c kmsbridge reports it available and lists its capabilities and commands', async (t) => {
    const r = openssl(ctx, ['engine', '-t', '-c', '-v', 'kmsbridge'], {
      env: { ...ctx.env, OPENSSL_CONF: ctx.conf },
    });
    t.equal(r.status, 0, r.stderr);
    t.match(r.stdout, /\(kmsbridge\) kmsbridge: private keys held by a key manager/);
    t.match(r.stdout, /\[rsaEncryption, ED25519\]/, 'the EVP_PKEY_METHODs it offers');
    t.match(r.stdout, /\[ available \]/);
    t.match(r.stdout, /AGENT_SOCKET, TIMEOUT_MS, CONNECT_TIMEOUT_MS, REMOTE_PUBKEY, RAND/);
    const byPath = openssl(ctx, ['engine', '-t', MODULE]);
    t.match(byPath.stdout, /\[ available \]/, `by absolute path too: ${byPath.stderr}`);
  });

  for (const [way, reach] of Object.entries(ways(ctx))) {
    t.test(`pkeyutl -sign with ${way}: ECDSA P-256 and RSA PKCS#1, verified by plain openssl`, async (t) => {
      for (const name of ['web', 'rsa']) {
        const sig = f(`${name}.way.sig`);
        const s = openssl(
          ctx,
          [
            'pkeyutl',
            '-sign',
            ...reach.pre,
            '-keyform',
            'engine',
            '-inkey',
            `kms:local/${name}`,
            '-in',
            f('msg.sha256'),
            '-out',
            sig,
            '-pkeyopt',
            'digest:sha256',
          ],
          { env: reach.env },
        );
        t.equal(s.status, 0, `${name}: ${s.stderr}`);
        const v = plainVerify(name, sig, 'sha256');
        t.match(v.stdout, /Signature Verified Successfully/, `${name}: ${v.stderr}`);
      }
    });
  }

  t.test('ECDSA P-384 over SHA-384', async (t) => {
    const s = openssl(ctx, [
      'pkeyutl',
      '-sign',
      ...ENGINE,
      '-keyform',
      'engine',
      '-inkey',
      'kms:local/ec384',
      '-in',
      f('msg.sha384'),
      '-out',
      f('p384.sig'),
      '-pkeyopt',
      'digest:sha384',
    ]);
    t.equal(s.status, 0, s.stderr);
    t.match(plainVerify('ec384', f('p384.sig'), 'sha384').stdout, /Verified Successfully/);
  });

  // OpenSSL's salt-length conventions, each resolved by the engine into the
  // SALT_LENGTH the key manager gets; the verifier states what it expects.
  const pss = [
    ['digest (-1)', 'rsa_pss_saltlen:-1', 'rsa_pss_saltlen:digest', 'sha256'],
    ['default (-2, the largest)', null, 'rsa_pss_saltlen:max', 'sha256'],
    ['max (-3)', 'rsa_pss_saltlen:max', 'rsa_pss_saltlen:max', 'sha256'],
    ['explicit 20 bytes', 'rsa_pss_saltlen:20', 'rsa_pss_saltlen:20', 'sha256'],
    ['SHA-384 with MGF1-SHA-256', 'rsa_mgf1_md:sha256', 'rsa_mgf1_md:sha256', 'sha384'],
  ];
  for (const [what, signOpt, verifyOpt, md] of pss) {
    t.test(`RSA-PSS, salt ${what}`, async (t) => {
      const sig = f('pss.sig');
      const opts = ['-pkeyopt', `digest:${md}`, '-pkeyopt', 'rsa_padding_mode:pss', ...(signOpt ? ['-pkeyopt', signOpt] : [])];
      const s = openssl(ctx, ['pkeyutl', '-sign', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-in', f(`msg.${md}`), '-out', sig, ...opts]);
      t.equal(s.status, 0, s.stderr);
      const v = plainVerify('rsa', sig, md, ['-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', verifyOpt]);
      t.match(v.stdout, /Signature Verified Successfully/, v.stderr);
    });
  }

  t.test('Ed25519 signs the whole message (-rawin)', async (t) => {
    const s = openssl(ctx, ['pkeyutl', '-sign', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/ed', '-rawin', '-in', f('msg.txt'), '-out', f('ed.sig')]);
    t.equal(s.status, 0, s.stderr);
    const v = openssl(ctx, ['pkeyutl', '-verify', '-pubin', '-inkey', f('ed.pub.pem'), '-rawin', '-in', f('msg.txt'), '-sigfile', f('ed.sig')]);
    t.match(v.stdout, /Signature Verified Successfully/, v.stderr);
  });

  t.test('pkeyutl -verify with the engine key runs locally and tells good from bad', async (t) => {
    openssl(ctx, [
      'pkeyutl',
      '-sign',
      ...ENGINE,
      '-keyform',
      'engine',
      '-inkey',
      'kms:local/rsa',
      '-in',
      f('msg.sha256'),
      '-out',
      f('v.sig'),
      '-pkeyopt',
      'digest:sha256',
    ]);
    const before = auditRecords(ctx).filter((r) => r.op === 'sign').length;
    const good = openssl(ctx, [
      'pkeyutl',
      '-verify',
      ...ENGINE,
      '-keyform',
      'engine',
      '-inkey',
      'kms:local/rsa',
      '-in',
      f('msg.sha256'),
      '-sigfile',
      f('v.sig'),
      '-pkeyopt',
      'digest:sha256',
    ]);
    t.match(good.stdout, /Signature Verified Successfully/, good.stderr);
    const bad = openssl(ctx, [
      'pkeyutl',
      '-verify',
      ...ENGINE,
      '-keyform',
      'engine',
      '-inkey',
      'kms:local/rsa',
      '-in',
      f('msg.sha384'),
      '-sigfile',
      f('v.sig'),
      '-pkeyopt',
      'digest:sha384',
    ]);
    t.not(bad.status, 0, 'a wrong digest does not verify');
    t.equal(auditRecords(ctx).filter((r) => r.op === 'sign').length, before, 'verification never asked the key manager to sign');
  });

  for (const [what, opts] of [
    ['OAEP SHA-256', ['-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256']],
    ['OAEP SHA-1 (the default digest)', ['-pkeyopt', 'rsa_padding_mode:oaep']],
    [
      'OAEP SHA-256 with MGF1-SHA-1 and a label',
      ['-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256', '-pkeyopt', 'rsa_mgf1_md:sha1', '-pkeyopt', 'rsa_oaep_label:6b6d73627269646765'],
    ],
  ]) {
    t.test(`pkeyutl -decrypt ${what} of what plain openssl encrypted`, async (t) => {
      const secret = Buffer.from('a secret for the key manager');
      const ct = openssl(ctx, ['pkeyutl', '-encrypt', '-pubin', '-inkey', f('rsa.pub.pem'), ...opts], { input: secret, encoding: 'buffer' });
      t.equal(ct.status, 0, String(ct.stderr));
      fs.writeFileSync(f('ct.bin'), ct.stdout);
      const pt = openssl(ctx, ['pkeyutl', '-decrypt', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-in', f('ct.bin'), ...opts], {
        encoding: 'buffer',
      });
      t.equal(pt.status, 0, String(pt.stderr));
      t.same(pt.stdout, secret);
    });
  }

  t.test('pkeyutl -encrypt with the engine key runs locally; the engine decrypts it', async (t) => {
    const before = auditRecords(ctx).length;
    const ct = openssl(ctx, ['pkeyutl', '-encrypt', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-pkeyopt', 'rsa_padding_mode:oaep'], {
      input: Buffer.from('round trip'),
      encoding: 'buffer',
    });
    t.equal(ct.status, 0, String(ct.stderr));
    t.same(
      auditRecords(ctx)
        .slice(before)
        .map((r) => r.op),
      ['describe'],
      'only the key was looked up: no private operation',
    );
    fs.writeFileSync(f('ct2.bin'), ct.stdout);
    const pt = openssl(ctx, [
      'pkeyutl',
      '-decrypt',
      ...ENGINE,
      '-keyform',
      'engine',
      '-inkey',
      'kms:local/rsa',
      '-in',
      f('ct2.bin'),
      '-pkeyopt',
      'rsa_padding_mode:oaep',
    ]);
    t.equal(pt.stdout, 'round trip', pt.stderr);
  });

  t.test('random bytes come from the key manager only when asked for (KMSBRIDGE_RAND=1, or RAND in the engine section)', async (t) => {
    const randoms = () => auditRecords(ctx).filter((r) => r.op === 'random');
    const off = openssl(ctx, ['rand', ...ENGINE, '-hex', '16']);
    t.equal(off.status, 0, off.stderr);
    t.equal(randoms().length, 0, 'not by default');
    const on = openssl(ctx, ['rand', ...ENGINE, '-hex', '16'], {
      env: { ...ctx.env, KMSBRIDGE_RAND: '1' },
    });
    t.equal(on.status, 0, on.stderr);
    t.match(on.stdout, /^[0-9a-f]{32}\n$/);
    t.match(randoms().at(-1), { op: 'random', length: 16, outcome: 'ok' }, 'the audit log shows the draw');
    const conf = fs.readFileSync(ctx.conf, 'utf8').replace('# RAND = 1', 'RAND = 1').replace('# default_algorithms = RAND', 'default_algorithms = RAND');
    fs.writeFileSync(f('rand.cnf'), conf);
    const n = randoms().length;
    const cnf = openssl(ctx, ['rand', '-hex', '8'], {
      env: { ...ctx.env, OPENSSL_CONF: f('rand.cnf') },
    });
    t.match(cnf.stdout, /^[0-9a-f]{16}\n$/, cnf.stderr);
    t.ok(randoms().length > n, 'through the configuration alone, with no -engine flag');
  });
}
