// openssl s_server with a kms key serves TLS 1.2 and 1.3; openssl s_client
// and curl verify the certificate. Also client-certificate authentication
// with a kms key.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { FLAGS, missing, openssl, setup } from './provider-harness.mjs';

const why = missing();

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
  const srv = spawn('openssl', ['s_server', ...FLAGS, '-accept', `127.0.0.1:${port}`, '-www', ...args], {
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

if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  const ok = (t, r, what) => t.equal(r.status, 0, `${what}: ${r.stderr}`);
  const haveCurl = spawnSync('curl', ['--version']).status === 0;

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
    'CA',
  );
  fs.writeFileSync(f('san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  for (const [name, key] of [
    ['ec', 'web'],
    ['rsa', 'rsa'],
  ]) {
    ok(t, openssl(ctx, ['req', '-new', ...FLAGS, '-key', `kms:local/${key}`, '-subj', '/CN=localhost', '-out', f(`${name}.csr`)]), `${name} CSR`);
    ok(
      t,
      openssl(ctx, [
        'x509',
        '-req',
        ...FLAGS,
        '-in',
        f(`${name}.csr`),
        '-CA',
        f('ca.pem'),
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
      `${name} cert`,
    );
  }

  for (const [name, key] of [
    ['ec', 'web'],
    ['rsa', 'rsa'],
  ]) {
    for (const version of ['1.2', '1.3']) {
      t.test(`s_server serves TLS ${version} with the ${name.toUpperCase()} key kms:local/${key}`, async (t) => {
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

  t.test('TLS 1.3 with RSA-PSS signatures only (rsa_pss_rsae_sha256)', async (t) => {
    const s = await serve(t, ctx, ['-cert', f('rsa.pem'), '-key', 'kms:local/rsa', '-sigalgs', 'rsa_pss_rsae_sha256']);
    const c = openssl(ctx, ['s_client', '-connect', `127.0.0.1:${s.port}`, '-tls1_3', '-CAfile', f('ca.pem'), '-verify_return_error', '-brief'], { input: '' });
    t.match(c.stderr, /Signature type: RSA-PSS/, `${c.stderr}\n${s.log()}`);
  });

  t.test('client-certificate authentication with a kms key', async (t) => {
    const s = await serve(t, ctx, ['-cert', f('rsa.pem'), '-key', 'kms:local/rsa', '-Verify', '1', '-CAfile', f('ca.pem'), '-verify_return_error']);
    const c = openssl(
      ctx,
      [
        's_client',
        ...FLAGS,
        '-connect',
        `127.0.0.1:${s.port}`,
        '-CAfile',
        f('ca.pem'),
        '-verify_return_error',
        '-cert',
        f('ec.pem'),
        '-key',
        'kms:local/web',
        '-brief',
      ],
      { input: '' },
    );
    t.match(c.stderr, /Verification: OK/, `${c.stderr}\n${s.log()}`);
    t.notMatch(c.stderr, /alert/);
  });
}
