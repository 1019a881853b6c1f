// The ENGINE's REMOTE_PUBKEY mode (KMSBRIDGE_REMOTE_PUBKEY=1, or the
// REMOTE_PUBKEY control command from openssl.cnf): pkeyutl -verify and
// -encrypt with an engine key reach the key manager as VERIFY and ENCRYPT,
// so its audit log shows them. Signatures come from the engine's own sign
// and are also checked by plain openssl with the exported public key;
// ciphertexts are opened by the engine's decrypt (the key manager's DECRYPT).
import t from 'tap';
import fs from 'node:fs';
import { ENGINE, MODULE, auditRecords, missing, openssl, setup } from './engine-harness.mjs';

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  const remote = { ...ctx.env, KMSBRIDGE_REMOTE_PUBKEY: '1' };
  fs.writeFileSync(f('msg.txt'), 'audited public-key operations\n');
  fs.writeFileSync(f('other.txt'), 'something else\n');
  for (const md of ['sha256', 'sha384']) {
    openssl(ctx, ['dgst', `-${md}`, '-binary', '-out', f(`msg.${md}`), f('msg.txt')]);
    openssl(ctx, ['dgst', `-${md}`, '-binary', '-out', f(`other.${md}`), f('other.txt')]);
  }
  const tamper = (file) => {
    const b = fs.readFileSync(file);
    b[b.length >> 1] ^= 0x01;
    const out = `${file}.tampered`;
    fs.writeFileSync(out, b);
    return out;
  };
  const since = (before, op) =>
    auditRecords(ctx)
      .slice(before)
      .filter((r) => r.op === op);

  // key, what the input is, pkeyutl options for sign and verify
  const SCHEMES = [
    ['rsa', 'RSA PKCS#1 v1.5, SHA-256', 'sha256', ['-pkeyopt', 'digest:sha256'], 'rsa-pkcs1'],
    [
      'rsa',
      'RSA-PSS, SHA-256, salt = digest length',
      'sha256',
      ['-pkeyopt', 'digest:sha256', '-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', 'rsa_pss_saltlen:-1'],
      'rsa-pss',
    ],
    ['web', 'ECDSA P-256, SHA-256', 'sha256', ['-pkeyopt', 'digest:sha256'], 'ecdsa'],
    ['ec384', 'ECDSA P-384, SHA-384', 'sha384', ['-pkeyopt', 'digest:sha384'], 'ecdsa'],
    ['ed', 'Ed25519 over the whole message', 'txt', ['-rawin'], 'ed25519'],
  ];

  for (const [key, what, input, opts, alg] of SCHEMES) {
    t.test(`REMOTE_PUBKEY: pkeyutl -verify sends ${what} to the key manager, accepts the engine's signature and rejects a tampered one`, async (t) => {
      const sig = f(`${key}-${alg}.sig`);
      const base = ['pkeyutl', ...ENGINE, '-keyform', 'engine', '-inkey', `kms:local/${key}`, ...opts];
      const s = openssl(ctx, [...base, '-sign', '-in', f(`msg.${input}`), '-out', sig]);
      t.equal(s.status, 0, `the engine signs: ${s.stderr}`);
      const plain = openssl(ctx, ['pkeyutl', '-verify', '-pubin', '-inkey', f(`${key}.pub.pem`), ...opts, '-in', f(`msg.${input}`), '-sigfile', sig]);
      t.match(plain.stdout, /Signature Verified Successfully/, `plain openssl with the exported public key verifies it too: ${plain.stderr}`);

      const before = auditRecords(ctx).length;
      const good = openssl(ctx, [...base, '-verify', '-in', f(`msg.${input}`), '-sigfile', sig], { env: remote });
      t.equal(good.status, 0, good.stderr);
      t.match(good.stdout, /Signature Verified Successfully/);

      const bad = openssl(ctx, [...base, '-verify', '-in', f(`msg.${input}`), '-sigfile', tamper(sig)], { env: remote });
      t.equal(bad.status, 1, 'a tampered signature fails');
      t.match(bad.stdout, /Signature Verification Failure/);
      t.notMatch(bad.stderr, /kmsbridge(:| engine:)/, 'a bad signature is an answer, not an engine error');
      t.ok(bad.signal === null, 'no crash');

      const other = openssl(ctx, [...base, '-verify', '-in', f(`other.${input}`), '-sigfile', sig], { env: remote });
      t.match(other.stdout, /Signature Verification Failure/, 'the good signature over other data fails');

      t.same(
        since(before, 'verify').map((r) => [r.uri, r.alg, r.outcome]),
        [
          [`kms:local/${key}`, alg, 'ok'],
          [`kms:local/${key}`, alg, 'BAD_SIGNATURE'],
          [`kms:local/${key}`, alg, 'BAD_SIGNATURE'],
        ],
        'the audit log has a verify line for each, with its outcome',
      );
    });
  }

  t.test('without REMOTE_PUBKEY, verify and encrypt stay local: the audit log shows no verify or encrypt', async (t) => {
    const sig = f('local.sig');
    openssl(ctx, [
      'pkeyutl',
      '-sign',
      ...ENGINE,
      '-keyform',
      'engine',
      '-inkey',
      'kms:local/web',
      '-in',
      f('msg.sha256'),
      '-out',
      sig,
      '-pkeyopt',
      'digest:sha256',
    ]);
    const before = auditRecords(ctx).length;
    const v = openssl(ctx, ['pkeyutl', '-verify', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/web', '-in', f('msg.sha256'), '-sigfile', sig]);
    t.match(v.stdout, /Signature Verified Successfully/, v.stderr);
    const e = openssl(
      ctx,
      ['pkeyutl', '-encrypt', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-pkeyopt', 'rsa_padding_mode:oaep', '-in', f('msg.txt')],
      {
        encoding: 'buffer',
      },
    );
    t.equal(e.status, 0, String(e.stderr));
    t.same(
      auditRecords(ctx)
        .slice(before)
        .map((r) => r.op)
        .filter((op) => op !== 'describe'),
      [],
      'only key lookups reached the key manager',
    );
  });

  for (const [what, opts] of [
    ['OAEP SHA-1 (the default digest)', ['-pkeyopt', 'rsa_padding_mode:oaep']],
    [
      'OAEP SHA-256 with MGF1-SHA-1 and a label',
      ['-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256', '-pkeyopt', 'rsa_mgf1_md:sha1', '-pkeyopt', 'rsa_oaep_label:6b6d73627269646765'],
    ],
  ]) {
    t.test(`REMOTE_PUBKEY: pkeyutl -encrypt ${what} by the key manager; only the key's decrypt opens it`, async (t) => {
      const secret = Buffer.from('a secret for the key manager');
      const before = auditRecords(ctx).length;
      const enc = () =>
        openssl(ctx, ['pkeyutl', '-encrypt', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', ...opts], {
          env: remote,
          input: secret,
          encoding: 'buffer',
        });
      const c1 = enc();
      const c2 = enc();
      t.equal(c1.status, 0, String(c1.stderr));
      t.equal(c1.stdout.length, 256, 'as long as the 2048-bit modulus');
      t.not(c1.stdout.toString('hex'), c2.stdout.toString('hex'), 'randomised padding: two encryptions differ');
      t.same(
        since(before, 'encrypt').map((r) => [r.uri, r.alg, r.outcome]),
        [
          ['kms:local/rsa', 'rsa-oaep', 'ok'],
          ['kms:local/rsa', 'rsa-oaep', 'ok'],
        ],
        'the audit log has an encrypt line for each',
      );
      fs.writeFileSync(f('remote-ct.bin'), c1.stdout);
      const pt = openssl(ctx, ['pkeyutl', '-decrypt', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-in', f('remote-ct.bin'), ...opts], {
        encoding: 'buffer',
      });
      t.equal(pt.status, 0, String(pt.stderr));
      t.same(pt.stdout, secret, "the engine's decrypt (the key manager's DECRYPT) gives the plaintext back");
      const wrong = openssl(
        ctx,
        [
          'pkeyutl',
          '-decrypt',
          ...ENGINE,
          '-keyform',
          'engine',
          '-inkey',
          'kms:local/rsa',
          '-in',
          f('remote-ct.bin'),
          '-pkeyopt',
          'rsa_padding_mode:oaep',
          '-pkeyopt',
          'rsa_oaep_md:sha512',
        ],
        {
          encoding: 'buffer',
        },
      );
      t.not(wrong.status, 0, 'other OAEP parameters do not open it: the parameters went to the key manager as given');
    });
  }

  t.test('REMOTE_PUBKEY: PKCS#1 v1.5 encryption follows the keyring policy on its decryption', async (t) => {
    const r = openssl(ctx, ['pkeyutl', '-encrypt', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/rsa', '-in', f('msg.txt')], { env: remote });
    t.equal(r.status, 1, r.stderr);
    t.match(r.stderr, /kmsbridge: (key kms:local\/rsa does not allow rsa-pkcs1-decrypt|PKCS#1 v1\.5 encryption to kms:local\/rsa is refused)/);
  });

  t.test('REMOTE_PUBKEY: the signing policy applies to verify (SHA-1 refused), as an error, not a failed signature', async (t) => {
    openssl(ctx, ['dgst', '-sha1', '-binary', '-out', f('msg.sha1'), f('msg.txt')]);
    fs.writeFileSync(f('junk.sig'), Buffer.alloc(256, 7));
    const r = openssl(
      ctx,
      [
        'pkeyutl',
        '-verify',
        ...ENGINE,
        '-keyform',
        'engine',
        '-inkey',
        'kms:local/rsa',
        '-in',
        f('msg.sha1'),
        '-sigfile',
        f('junk.sig'),
        '-pkeyopt',
        'digest:sha1',
      ],
      { env: remote },
    );
    t.equal(r.status, 1);
    t.match(r.stderr, /kmsbridge: SHA-1 signatures are refused for keyring 'local'/);
  });

  t.test('the REMOTE_PUBKEY control command in openssl.cnf does the same as the environment', async (t) => {
    const conf = f('remote.cnf');
    fs.writeFileSync(
      conf,
      fs.readFileSync(ctx.conf, 'utf8').replace(/^TIMEOUT_MS = .*$/m, (m) => `${m}\nREMOTE_PUBKEY = 1`),
    );
    t.match(fs.readFileSync(conf, 'utf8'), /REMOTE_PUBKEY = 1/, 'the command is in the engine section');
    const sig = f('conf.sig');
    openssl(ctx, ['pkeyutl', '-sign', ...ENGINE, '-keyform', 'engine', '-inkey', 'kms:local/web', '-in', f('msg.sha256'), '-out', sig]);
    const before = auditRecords(ctx).length;
    const v = openssl(
      ctx,
      ['pkeyutl', '-verify', '-engine', 'kmsbridge', '-keyform', 'engine', '-inkey', 'kms:local/web', '-in', f('msg.sha256'), '-sigfile', sig],
      {
        env: { ...ctx.env, OPENSSL_CONF: conf },
      },
    );
    t.match(v.stdout, /Signature Verified Successfully/, v.stderr);
    t.same(
      since(before, 'verify').map((r) => r.outcome),
      ['ok'],
      'the verify reached the key manager',
    );
  });

  t.test('REMOTE_PUBKEY leaves keys that are not kmsbridge keys to OpenSSL', async (t) => {
    openssl(ctx, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f('own.pem')]);
    const s = openssl(ctx, ['pkeyutl', '-sign', '-inkey', f('own.pem'), '-in', f('msg.sha256'), '-out', f('own.sig')]);
    t.equal(s.status, 0, s.stderr);
    const before = auditRecords(ctx).length;
    const v = openssl(ctx, ['pkeyutl', '-verify', '-engine', MODULE, '-inkey', f('own.pem'), '-in', f('msg.sha256'), '-sigfile', f('own.sig')], {
      env: remote,
    });
    t.match(v.stdout, /Signature Verified Successfully/, v.stderr);
    t.equal(auditRecords(ctx).length, before, 'the key manager saw nothing');
  });
}
