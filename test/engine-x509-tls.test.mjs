// Certificates and TLS with ENGINE keys: req -new/-x509 and x509 -req
// -CAkeyform engine sign with kms keys (plain openssl verifies them); then
// s_server with `-engine ... -keyform engine` serves TLS 1.2 and 1.3, RSA
// (PSS) and ECDSA, to openssl s_client and curl, each verifying the chain.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { ENGINE, missing, openssl, setup } from './engine-harness.mjs';

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function serve(t, ctx, args) {
  const port = await freePort();
  const srv = spawn('openssl', ['s_server', ...ENGINE, '-keyform', 'engine', '-accept', `127.0.0.1:${port}`, '-www', ...args], {
    cwd: ctx.dir,
    env: ctx.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  srv.stdout.on('data', (d) => (log += d));
  srv.stderr.on('data', (d) => (log += d));
  t.teardown(() => srv.kill());
  let exited = false;
  srv.once('exit', () => (exited = true));
  for (let i = 0; i < 100 && !exited && !/ACCEPT/.test(log); i++) await new Promise((r) => setTimeout(r, 50));
  return { port, log: () => log };
}

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  const ok = (t, r, what) => t.equal(r.status, 0, `${what}: ${r.stderr}`);
  const haveCurl = spawnSync('curl', ['--version']).status === 0;
  fs.writeFileSync(f('san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');

  t.test('req -new -x509 makes a self-signed CA with the engine key; plain openssl verifies it', async (t) => {
    ok(
      t,
      openssl(ctx, [
        'req',
        '-new',
        '-x509',
        ...ENGINE,
        '-keyform',
        'engine',
        '-key',
        'kms:local/rsa',
        '-subj',
        '/CN=kms engine CA',
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
    const v = openssl(ctx, ['verify', '-CAfile', f('ca.pem'), f('ca.pem')]);
    t.match(v.stdout, /OK/, v.stderr);
    const pub = openssl(ctx, ['x509', '-in', f('ca.pem'), '-noout', '-pubkey']);
    t.equal(pub.stdout, fs.readFileSync(f('rsa.pub.pem'), 'utf8'), 'the certificate holds the kms key');
  });

  for (const [name, key] of [
    ['ec', 'web'],
    ['rsa', 'rsa'],
  ]) {
    t.test(`req -new with the ${name.toUpperCase()} engine key, x509 -req -CAkeyform engine -CAkey kms:local/rsa`, async (t) => {
      ok(
        t,
        openssl(ctx, ['req', '-new', ...ENGINE, '-keyform', 'engine', '-key', `kms:local/${key}`, '-subj', '/CN=localhost', '-out', f(`${name}.csr`)]),
        'CSR',
      );
      ok(t, openssl(ctx, ['req', '-verify', '-noout', '-in', f(`${name}.csr`)]), 'the CSR self-signature verifies');
      ok(
        t,
        openssl(ctx, [
          'x509',
          '-req',
          ...ENGINE,
          '-in',
          f(`${name}.csr`),
          '-CA',
          f('ca.pem'),
          '-CAkeyform',
          'engine',
          '-CAkey',
          'kms:local/rsa',
          '-CAcreateserial',
          '-days',
          '30',
          '-extfile',
          f('san.ext'),
          '-out',
          f(`${name}.pem`),
        ]),
        'x509 -req',
      );
      const v = openssl(ctx, ['verify', '-CAfile', f('ca.pem'), f(`${name}.pem`)]);
      t.match(v.stdout, /OK/, v.stderr);
    });
  }

  for (const [name, key] of [
    ['ec', 'web'],
    ['rsa', 'rsa'],
  ]) {
    for (const version of ['1.2', '1.3']) {
      t.test(`s_server -engine serves TLS ${version} with the ${name.toUpperCase()} key kms:local/${key}; s_client and curl verify`, async (t) => {
        const s = await serve(t, ctx, ['-cert', f(`${name}.pem`), '-key', `kms:local/${key}`]);
        const c = openssl(
          ctx,
          [
            's_client',
            '-connect',
            `127.0.0.1:${s.port}`,
            `-tls${version.replace('.', '_')}`,
            '-CAfile',
            f('ca.pem'),
            '-verify_return_error',
            '-servername',
            'localhost',
            '-brief',
          ],
          { input: '' },
        );
        t.match(c.stderr, new RegExp(`Protocol version: TLSv${version}`), `s_client: ${c.stderr}\nserver: ${s.log()}`);
        t.match(c.stderr, /Verification: OK/);
        if (name === 'rsa') t.match(c.stderr, /Signature type: RSA-PSS/, 'RSA signs with PSS at both versions');
        if (haveCurl) {
          const cu = spawnSync(
            'curl',
            [
              '-sS',
              '--cacert',
              f('ca.pem'),
              `--tlsv${version}`,
              '--tls-max',
              version,
              '--resolve',
              `localhost:${s.port}:127.0.0.1`,
              '-o',
              '/dev/null',
              '-w',
              '%{http_code}',
              `https://localhost:${s.port}/`,
            ],
            { encoding: 'utf8', timeout: 30000 },
          );
          t.equal(cu.stdout, '200', `curl: ${cu.stderr}`);
        }
      });
    }
  }

  t.test('TLS 1.3 with rsa_pss_rsae_sha384 only: the key manager signs SHA-384 PSS, not raw RSA', async (t) => {
    const s = await serve(t, ctx, ['-cert', f('rsa.pem'), '-key', 'kms:local/rsa', '-sigalgs', 'rsa_pss_rsae_sha384']);
    const c = openssl(ctx, ['s_client', '-connect', `127.0.0.1:${s.port}`, '-tls1_3', '-CAfile', f('ca.pem'), '-verify_return_error', '-brief'], { input: '' });
    t.match(c.stderr, /Signature type: RSA-PSS/, `${c.stderr}\n${s.log()}`);
    t.match(c.stderr, /Hash used: SHA384/);
    t.match(c.stderr, /Verification: OK/);
  });
}
