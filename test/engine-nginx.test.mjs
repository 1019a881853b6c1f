// nginx, an engine-only application that forks: its master loads the key
// through the ENGINE (ssl_certificate_key engine:kmsbridge:kms:...), then 4
// forked workers serve TLS 1.2 and 1.3 with it. This is the case where the
// best peer fails today (DESIGN.md): our key objects hold only the URI and
// the channel reconnects in each child. curl verifies every handshake.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { ENGINE, auditRecords, missing, openssl, setup } from './engine-harness.mjs';

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const haveNginx = spawnSync('nginx', ['-v']).status === 0;
const haveCurl = spawnSync('curl', ['--version']).status === 0;
const why = missing() ?? (!haveNginx ? 'no nginx' : !haveCurl ? 'no curl' : process.getuid() !== 0 ? 'nginx with user root needs root' : null);
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  const ok = (t, r, what) => t.equal(r.status, 0, `${what}: ${r.stderr}`);
  fs.writeFileSync(f('san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  ok(
    t,
    openssl(ctx, ['req', '-new', '-x509', ...ENGINE, '-keyform', 'engine', '-key', 'kms:local/rsa', '-subj', '/CN=kms CA', '-days', '30', '-out', f('ca.pem')]),
    'CA',
  );
  for (const key of ['rsa', 'web']) {
    ok(t, openssl(ctx, ['req', '-new', ...ENGINE, '-keyform', 'engine', '-key', `kms:local/${key}`, '-subj', '/CN=localhost', '-out', f(`${key}.csr`)]), 'CSR');
    ok(
      t,
      openssl(ctx, [
        'x509',
        '-req',
        ...ENGINE,
        '-in',
        f(`${key}.csr`),
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
        f(`${key}.pem`),
      ]),
      'certificate',
    );
  }

  for (const key of ['rsa', 'web']) {
    t.test(`nginx with 4 forked workers serves TLS 1.2 and 1.3 with the engine key kms:local/${key} its master loaded`, async (t) => {
      const port = await freePort();
      const dir = f(`nginx-${key}`);
      fs.mkdirSync(`${dir}/tmp`, { recursive: true });
      fs.writeFileSync(
        `${dir}/nginx.conf`,
        `daemon off;
master_process on;
worker_processes 4;
# the workers must reach the agent's socket, which only its owner may use
user root;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp; proxy_temp_path ${dir}/tmp; fastcgi_temp_path ${dir}/tmp;
  uwsgi_temp_path ${dir}/tmp; scgi_temp_path ${dir}/tmp;
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate ${f(`${key}.pem`)};
    ssl_certificate_key engine:kmsbridge:kms:local/${key};
    location / { return 200 "worker $pid\\n"; }
  }
}
`,
      );
      // The engine comes from `kmsbridge conf --engine`; nginx clears the environment of its workers.
      const srv = spawn('nginx', ['-p', dir, '-c', `${dir}/nginx.conf`, '-e', `${dir}/error.log`], {
        env: { ...ctx.env, OPENSSL_CONF: ctx.conf },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let log = '';
      srv.stderr.on('data', (d) => (log += d));
      const exited = new Promise((r) => srv.once('exit', r));
      t.teardown(async () => {
        srv.kill('SIGQUIT');
        await exited;
      });
      const up = async () => {
        for (let i = 0; i < 100; i++) {
          if (srv.exitCode !== null) return false;
          const c = spawnSync('curl', ['-s', '-k', '-o', '/dev/null', `https://127.0.0.1:${port}/`], { timeout: 5000 });
          if (c.status === 0) return true;
          await new Promise((r) => setTimeout(r, 100));
        }
        return false;
      };
      t.ok(await up(), `nginx is serving: ${log}${fs.existsSync(`${dir}/error.log`) ? fs.readFileSync(`${dir}/error.log`, 'utf8') : ''}`);
      const signsBefore = auditRecords(ctx).filter((r) => r.op === 'sign' && r.uri === `kms:local/${key}`).length;

      const workers = new Set();
      const failures = [];
      const curl = (v) =>
        new Promise((resolve) => {
          const c = spawn('curl', [
            '-sS',
            `--tlsv${v}`,
            '--tls-max',
            v,
            '--cacert',
            f('ca.pem'),
            '--resolve',
            `localhost:${port}:127.0.0.1`,
            `https://localhost:${port}/`,
          ]);
          let out = '';
          let err = '';
          c.stdout.on('data', (d) => (out += d));
          c.stderr.on('data', (d) => (err += d));
          c.once('close', (code) => resolve({ code, out, err }));
        });
      for (const v of ['1.2', '1.3']) {
        const results = await Promise.all(Array.from({ length: 24 }, () => curl(v)));
        for (const r of results) {
          if (r.code === 0 && /^worker \d+/.test(r.out)) workers.add(r.out.trim());
          else failures.push(`TLS ${v}: ${r.code} ${r.err.trim()}`);
        }
      }
      t.same(failures, [], 'every handshake in every worker verified');
      t.ok(workers.size >= 2, `handshakes were served by ${workers.size} forked workers`);
      const signs = auditRecords(ctx)
        .filter((r) => r.op === 'sign' && r.uri === `kms:local/${key}`)
        .slice(signsBefore);
      t.ok(signs.length >= 48, `the key manager signed each handshake (${signs.length})`);
      t.ok(new Set(signs.map((r) => r.pid)).size >= 2, 'from several worker processes');
      if (key === 'rsa')
        t.ok(
          signs.every((r) => r.alg === 'rsa-pss'),
          'RSA handshakes signed with PSS, never raw RSA',
        );
    });
  }
}
