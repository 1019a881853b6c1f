// Certificates, CMS, decryption and ECDH with kms keys through the system
// openssl; every result is checked by plain openssl.
import t from 'tap';
import fs from 'node:fs';
import { FLAGS, missing, openssl, setup } from './provider-harness.mjs';

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  const ok = (t, r, what) => t.equal(r.status, 0, `${what}: ${r.stderr}`);
  fs.writeFileSync(f('msg.txt'), 'attack at dawn\n');

  t.test('req -x509 makes a self-signed RSA CA that verifies', async (t) => {
    ok(
      t,
      openssl(ctx, [
        'req',
        '-x509',
        ...FLAGS,
        '-key',
        'kms:local/rsa',
        '-subj',
        '/CN=kms CA',
        '-days',
        '30',
        '-addext',
        'basicConstraints=critical,CA:TRUE',
        '-addext',
        'keyUsage=critical,keyCertSign,cRLSign',
        '-out',
        f('ca.pem'),
      ]),
      'req -x509',
    );
    ok(t, openssl(ctx, ['verify', '-CAfile', f('ca.pem'), f('ca.pem')]), 'verify');
  });

  t.test('req -x509 with RSA-PSS and with Ed25519', async (t) => {
    ok(
      t,
      openssl(ctx, [
        'req',
        '-x509',
        ...FLAGS,
        '-key',
        'kms:local/rsa',
        '-subj',
        '/CN=pss',
        '-sigopt',
        'rsa_padding_mode:pss',
        '-sigopt',
        'rsa_pss_saltlen:digest',
        '-out',
        f('pss.pem'),
      ]),
      'req -x509 PSS',
    );
    ok(t, openssl(ctx, ['verify', '-CAfile', f('pss.pem'), f('pss.pem')]), 'verify PSS');
    ok(t, openssl(ctx, ['req', '-x509', ...FLAGS, '-key', 'kms:local/ed', '-subj', '/CN=ed', '-out', f('ed.pem')]), 'req -x509 Ed25519');
    ok(t, openssl(ctx, ['verify', '-CAfile', f('ed.pem'), f('ed.pem')]), 'verify Ed25519');
  });

  t.test('req -new makes a CSR that verifies; x509 -req -CAkey kms: signs it', async (t) => {
    ok(t, openssl(ctx, ['req', '-new', ...FLAGS, '-key', 'kms:local/web', '-subj', '/CN=localhost', '-out', f('web.csr')]), 'req -new');
    ok(t, openssl(ctx, ['req', '-verify', '-noout', '-in', f('web.csr')]), 'CSR verifies');
    ok(
      t,
      openssl(ctx, [
        'x509',
        '-req',
        ...FLAGS,
        '-in',
        f('web.csr'),
        '-CA',
        f('ca.pem'),
        '-CAkey',
        'kms:local/rsa',
        '-CAcreateserial',
        '-days',
        '30',
        '-out',
        f('web.pem'),
      ]),
      'x509 -req',
    );
    ok(t, openssl(ctx, ['verify', '-CAfile', f('ca.pem'), f('web.pem')]), 'chain verifies');
  });

  t.test('cms -sign with an EC key verifies', async (t) => {
    ok(
      t,
      openssl(ctx, [
        'cms',
        '-sign',
        ...FLAGS,
        '-nodetach',
        '-binary',
        '-in',
        f('msg.txt'),
        '-signer',
        f('web.pem'),
        '-inkey',
        'kms:local/web',
        '-outform',
        'DER',
        '-out',
        f('msg.cms'),
      ]),
      'cms -sign',
    );
    const v = openssl(ctx, ['cms', '-verify', '-binary', '-inform', 'DER', '-in', f('msg.cms'), '-CAfile', f('ca.pem')]);
    ok(t, v, 'cms -verify');
    t.equal(v.stdout, 'attack at dawn\n');
  });

  t.test('cms -decrypt with RSA-OAEP', async (t) => {
    ok(
      t,
      openssl(ctx, [
        'cms',
        '-encrypt',
        '-binary',
        '-in',
        f('msg.txt'),
        '-recip',
        f('ca.pem'),
        '-keyopt',
        'rsa_padding_mode:oaep',
        '-outform',
        'DER',
        '-out',
        f('enc.cms'),
      ]),
      'cms -encrypt',
    );
    const d = openssl(ctx, ['cms', '-decrypt', ...FLAGS, '-binary', '-inform', 'DER', '-in', f('enc.cms'), '-recip', f('ca.pem'), '-inkey', 'kms:local/rsa']);
    ok(t, d, 'cms -decrypt');
    t.equal(d.stdout, 'attack at dawn\n');
  });

  for (const md of ['sha1', 'sha256']) {
    t.test(`pkeyutl -decrypt OAEP ${md} of data openssl encrypted`, async (t) => {
      ok(
        t,
        openssl(ctx, [
          'pkeyutl',
          '-encrypt',
          '-pubin',
          '-inkey',
          f('rsa.pub.pem'),
          '-in',
          f('msg.txt'),
          '-out',
          f(`ct-${md}`),
          '-pkeyopt',
          'rsa_padding_mode:oaep',
          '-pkeyopt',
          `rsa_oaep_md:${md}`,
        ]),
        'encrypt',
      );
      const d = openssl(ctx, [
        'pkeyutl',
        '-decrypt',
        ...FLAGS,
        '-inkey',
        'kms:local/rsa',
        '-in',
        f(`ct-${md}`),
        '-pkeyopt',
        'rsa_padding_mode:oaep',
        '-pkeyopt',
        `rsa_oaep_md:${md}`,
      ]);
      ok(t, d, 'decrypt');
      t.equal(d.stdout, 'attack at dawn\n');
    });
  }

  t.test('pkeyutl -derive equals the peer side of ECDH', async (t) => {
    ok(t, openssl(ctx, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'group:P-256', '-out', f('peer.pem')]), 'peer key');
    ok(t, openssl(ctx, ['pkey', '-in', f('peer.pem'), '-pubout', '-out', f('peer.pub.pem')]), 'peer public key');
    ok(t, openssl(ctx, ['pkeyutl', '-derive', ...FLAGS, '-inkey', 'kms:local/web', '-peerkey', f('peer.pub.pem'), '-out', f('z1')]), 'kms side');
    ok(t, openssl(ctx, ['pkeyutl', '-derive', '-inkey', f('peer.pem'), '-peerkey', f('web.pub.pem'), '-out', f('z2')]), 'peer side');
    t.same(fs.readFileSync(f('z1')), fs.readFileSync(f('z2')), 'same shared secret');
  });

  // OpenSSL 3.0 picks the keymgmt for `genpkey -algorithm EC` from the first
  // provider that offers EC; with default loaded first (as it must be), that
  // is default's, which knows no kms_uri: -propquery names ours.
  for (const [alg, opts, spec] of [
    ['EC', ['-pkeyopt', 'group:P-256'], /ec P-256/],
    ['RSA', ['-pkeyopt', 'rsa_keygen_bits:2048'], /rsa-2048/],
  ]) {
    t.test(`genpkey -pkeyopt kms_uri creates an ${alg} key and writes its key reference`, async (t) => {
      const name = `gen-${alg.toLowerCase()}`;
      const uri = `kms:local/${name}`;
      ok(
        t,
        openssl(ctx, [
          'genpkey',
          ...FLAGS,
          '-propquery',
          'provider=kmsbridge',
          '-algorithm',
          alg,
          ...opts,
          '-pkeyopt',
          `kms_uri:${uri}`,
          '-out',
          f(`${name}.pem`),
        ]),
        'genpkey',
      );
      const list = ctx.kb('keys', 'list', '--keyring', 'local');
      t.match(list.stdout, new RegExp(`${uri}\\s+${spec.source}`), 'the key is in the keyring');
      // The file is the key reference and nothing else: the same bytes as `kmsbridge keyref`.
      const written = fs.readFileSync(f(`${name}.pem`), 'utf8');
      t.equal(written, ctx.kb('keyref', uri).stdout, 'the file is the key-reference PEM');
      const asn1 = openssl(ctx, ['asn1parse', '-in', f(`${name}.pem`)]);
      ok(t, asn1, 'asn1parse');
      t.match(asn1.stdout, /INTEGER\s+:00[\s\S]*UTF8STRING\s+:kms:local\/gen-/);
      t.equal(asn1.stdout.trim().split('\n').length, 3, 'SEQUENCE { version, uri }: no key material');
      // ... and it works as a key file: sign with it, verify with the exported public key.
      ok(t, openssl(ctx, ['pkey', ...FLAGS, '-in', uri, '-pubout', '-out', f(`${name}.pub.pem`)]), 'public key');
      ok(t, openssl(ctx, ['dgst', '-sha256', ...FLAGS, '-sign', f(`${name}.pem`), '-out', f(`${name}.sig`), f('msg.txt')]), 'sign with -key file');
      const v = openssl(ctx, ['dgst', '-sha256', '-verify', f(`${name}.pub.pem`), '-signature', f(`${name}.sig`), f('msg.txt')]);
      ok(t, v, 'verify');
      t.match(v.stdout, /Verified OK/);
    });
  }

  t.test('pkey -out writes the key reference of a kms key, in PEM and DER, and both load again', async (t) => {
    ok(t, openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web', '-out', f('web.ref.out.pem')]), 'pkey PEM');
    t.equal(fs.readFileSync(f('web.ref.out.pem'), 'utf8'), ctx.kb('keyref', 'kms:local/web').stdout);
    ok(t, openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web', '-outform', 'DER', '-out', f('web.ref.der')]), 'pkey DER');
    const asn1 = openssl(ctx, ['asn1parse', '-inform', 'DER', '-in', f('web.ref.der')]);
    t.match(asn1.stdout, /UTF8STRING\s+:kms:local\/web/);
    for (const [file, form] of [
      [f('web.ref.out.pem'), 'PEM'],
      [f('web.ref.der'), 'DER'],
    ]) {
      ok(t, openssl(ctx, ['dgst', '-sha256', ...FLAGS, '-sign', file, '-keyform', form, '-out', f('w.sig'), f('msg.txt')]), `sign (${form})`);
      ok(t, openssl(ctx, ['dgst', '-sha256', '-verify', f('web.pub.pem'), '-signature', f('w.sig'), f('msg.txt')]), `verify (${form})`);
    }
  });
}
