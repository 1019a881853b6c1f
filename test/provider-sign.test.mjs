// Signatures by kms keys through the system openssl, verified by plain
// openssl with the public key the CLI exports.
import t from 'tap';
import fs from 'node:fs';
import { missing, openssl, setup, ways } from './provider-harness.mjs';

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  fs.writeFileSync(f('msg.txt'), 'the quick brown fox\n');
  const dgst = openssl(ctx, ['dgst', '-sha256', '-binary', '-out', f('msg.sha256'), f('msg.txt')]);
  t.equal(dgst.status, 0, 'digest computed');

  for (const [way, reach] of Object.entries(ways(ctx))) {
    t.test(`via ${way}`, async (t) => {
      const sign = (name, args) => {
        const r = reach(name);
        return openssl(ctx, [...args.slice(0, 1), ...r.pre, ...args.slice(1).map((a) => (a === '@KEY' ? r.key : a))], { env: r.env });
      };
      const verify = (args) => openssl(ctx, args);

      t.test('pkeyutl -sign ECDSA P-256 over a SHA-256 digest', async (t) => {
        const s = sign('web', ['pkeyutl', '-sign', '-inkey', '@KEY', '-in', f('msg.sha256'), '-out', f('p256.sig')]);
        t.equal(s.status, 0, s.stderr);
        const v = verify(['pkeyutl', '-verify', '-pubin', '-inkey', f('web.pub.pem'), '-in', f('msg.sha256'), '-sigfile', f('p256.sig')]);
        t.equal(v.status, 0, v.stdout + v.stderr);
      });

      for (const [name, md] of [
        ['ec384', 'sha384'],
        ['ec521', 'sha512'],
        ['rsa', 'sha256'],
        ['web', 'sha384'],
      ]) {
        t.test(`dgst -${md} -sign with ${name}`, async (t) => {
          const s = sign(name, ['dgst', `-${md}`, '-sign', '@KEY', '-out', f(`${name}.${md}.sig`), f('msg.txt')]);
          t.equal(s.status, 0, s.stderr);
          const v = verify(['dgst', `-${md}`, '-verify', f(`${name}.pub.pem`), '-signature', f(`${name}.${md}.sig`), f('msg.txt')]);
          t.equal(v.status, 0, v.stdout + v.stderr);
        });
      }

      t.test('pkeyutl -sign RSA PKCS#1 v1.5', async (t) => {
        const s = sign('rsa', ['pkeyutl', '-sign', '-inkey', '@KEY', '-in', f('msg.sha256'), '-out', f('pkcs1.sig'), '-pkeyopt', 'digest:sha256']);
        t.equal(s.status, 0, s.stderr);
        const v = verify([
          'pkeyutl',
          '-verify',
          '-pubin',
          '-inkey',
          f('rsa.pub.pem'),
          '-in',
          f('msg.sha256'),
          '-sigfile',
          f('pkcs1.sig'),
          '-pkeyopt',
          'digest:sha256',
        ]);
        t.equal(v.status, 0, v.stdout + v.stderr);
      });

      for (const salt of ['digest', 'max', 'auto', '20']) {
        t.test(`pkeyutl -sign RSA-PSS, salt length ${salt}`, async (t) => {
          const s = sign('rsa', [
            'pkeyutl',
            '-sign',
            '-inkey',
            '@KEY',
            '-in',
            f('msg.sha256'),
            '-out',
            f(`pss-${salt}.sig`),
            '-pkeyopt',
            'digest:sha256',
            '-pkeyopt',
            'rsa_padding_mode:pss',
            '-pkeyopt',
            `rsa_pss_saltlen:${salt}`,
          ]);
          t.equal(s.status, 0, s.stderr);
          const v = verify([
            'pkeyutl',
            '-verify',
            '-pubin',
            '-inkey',
            f('rsa.pub.pem'),
            '-in',
            f('msg.sha256'),
            '-sigfile',
            f(`pss-${salt}.sig`),
            '-pkeyopt',
            'digest:sha256',
            '-pkeyopt',
            'rsa_padding_mode:pss',
            '-pkeyopt',
            `rsa_pss_saltlen:${salt === 'max' || salt === 'auto' ? 'auto' : salt}`,
          ]);
          t.equal(v.status, 0, v.stdout + v.stderr);
        });
      }

      t.test('dgst -sha384 -sign RSA-PSS with MGF1 SHA-256', async (t) => {
        const opts = ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:digest', '-sigopt', 'rsa_mgf1_md:sha256'];
        const s = sign('rsa', ['dgst', '-sha384', '-sign', '@KEY', ...opts, '-out', f('pss-mgf.sig'), f('msg.txt')]);
        t.equal(s.status, 0, s.stderr);
        const v = verify(['dgst', '-sha384', '-verify', f('rsa.pub.pem'), ...opts, '-signature', f('pss-mgf.sig'), f('msg.txt')]);
        t.equal(v.status, 0, v.stdout + v.stderr);
      });

      t.test('pkeyutl -sign -rawin Ed25519', async (t) => {
        const s = sign('ed', ['pkeyutl', '-sign', '-rawin', '-inkey', '@KEY', '-in', f('msg.txt'), '-out', f('ed.sig')]);
        t.equal(s.status, 0, s.stderr);
        const v = verify(['pkeyutl', '-verify', '-rawin', '-pubin', '-inkey', f('ed.pub.pem'), '-in', f('msg.txt'), '-sigfile', f('ed.sig')]);
        t.equal(v.status, 0, v.stdout + v.stderr);
      });
    });
  }
}
