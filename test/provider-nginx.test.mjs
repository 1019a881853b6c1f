// nginx (the Debian package) serves TLS with kms keys: `ssl_certificate_key`
// is a key-reference PEM, the provider comes only from the openssl.cnf that
// `kmsbridge conf` writes, and `worker_processes 4` forks the workers after
// the master has loaded the keys — where the best peer fails today (DESIGN).
// curl is the independent client: it verifies the certificate chain and the
// handshake signature on every connection.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { FLAGS, missing, openssl, setup } from './provider-harness.mjs';

const WORKERS = 4;
const HANDSHAKES = 50; // per scenario; 4 scenarios make 200 signatures in the workers

function haveNginx() {
  return spawnSync('nginx', ['-v'], { stdio: 'ignore' }).status === 0 || fs.existsSync('/usr/sbin/nginx');
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

const why =
  missing() ??
  (haveNginx() ? null : 'nginx is not installed (nginx-light)') ??
  (spawnSync('curl', ['--version']).status === 0 ? null : 'curl is not installed') ??
  (process.getuid?.() === 0 ? null : 'nginx workers run as root here; run as root');

if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  // Awaited before the first assertion: tap ends a test that goes idle after asserting.
  const ports = { ec: await freePort(), rsa: await freePort() };
  const ok = (t, r, what) => t.equal(r.status, 0, `${what}: ${r.stderr}`);

  // A CA and one certificate per key, all signed through the provider.
  ok(
    t,
    openssl(ctx, [
      'req',
      '-x509',
      ...FLAGS,
      '-key',
      'kms:local/rsa',
      '-subj',
      '/CN=kms nginx CA',
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
  const KEYS = { ec: 'web', rsa: 'rsa' };
  for (const [name, key] of Object.entries(KEYS)) {
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
        f(`${name}.crt`),
      ]),
      `${name} certificate`,
    );
    // The key file nginx reads, written by the CLI a user would run.
    ok(t, ctx.kb('keyref', `kms:local/${key}`, '-o', f(`${name}.key.pem`)), `${name} keyref`);
  }
  ok(t, ctx.kb('conf', '-o', f('openssl-app.cnf')), 'kmsbridge conf');

  // nginx's private prefix: config, pid, logs and temp dirs under the test's directory.
  const prefix = f('nginx');
  fs.mkdirSync(`${prefix}/logs`, { recursive: true });
  fs.mkdirSync(`${prefix}/tmp`, { recursive: true });
  const server = (name) => `
  server {
    # reuseport: one listening socket per worker, so the kernel spreads the
    # connections over all of them and every forked worker has to sign.
    listen 127.0.0.1:${ports[name]} ssl reuseport;
    ssl_certificate ${f(`${name}.crt`)};
    ssl_certificate_key ${f(`${name}.key.pem`)};
    location / { return 200 "${name} $pid\\n"; }
  }`;
  fs.writeFileSync(
    `${prefix}/nginx.conf`,
    `
# Workers run as root like the test: the agent socket is private to its user.
user root;
worker_processes ${WORKERS};
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log info;
# nginx clears the environment of its workers; keep what OpenSSL reads.
env OPENSSL_CONF;
events { worker_connections 256; }
http {
  access_log ${prefix}/logs/access.log;
  client_body_temp_path ${prefix}/tmp/body;
  proxy_temp_path ${prefix}/tmp/proxy;
  fastcgi_temp_path ${prefix}/tmp/fastcgi;
  uwsgi_temp_path ${prefix}/tmp/uwsgi;
  scgi_temp_path ${prefix}/tmp/scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
  # A full handshake, so a signature, on every connection; one request each.
  ssl_session_cache off;
  ssl_session_tickets off;
  keepalive_timeout 0;
${server('ec')}
${server('rsa')}
}
`,
  );

  // Only OPENSSL_CONF points nginx at kmsbridge: no flags, and no
  // KMSBRIDGE_AGENT_SOCK either — the socket comes from the generated file.
  // KMSBRIDGE_DEBUG logs each forwarded call with its pid: which process signed.
  const debugLog = f('kmsbridge-debug.log');
  const nginxEnv = { ...ctx.env, OPENSSL_CONF: f('openssl-app.cnf'), KMSBRIDGE_DEBUG: debugLog };
  delete nginxEnv.KMSBRIDGE_AGENT_SOCK;
  const master = spawn('nginx', ['-p', prefix, '-c', `${prefix}/nginx.conf`, '-g', 'daemon off; master_process on;'], {
    env: nginxEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  master.stdout.on('data', (d) => (out += d));
  master.stderr.on('data', (d) => (out += d));
  const exited = new Promise((r) => master.once('exit', (code, signal) => r({ code, signal })));
  const errorLog = () => (fs.existsSync(`${prefix}/logs/error.log`) ? fs.readFileSync(`${prefix}/logs/error.log`, 'utf8') : '');
  const workerPids = () => [...errorLog().matchAll(/start worker process (\d+)/g)].map((m) => Number(m[1]));
  t.teardown(async () => {
    if (master.exitCode !== null || master.signalCode !== null) return;
    const workers = workerPids();
    process.kill(master.pid, 'SIGTERM'); // nginx's fast shutdown: the master stops its workers
    const done = await Promise.race([exited.then(() => true), sleep(10000).then(() => false)]);
    if (!done) {
      master.kill('SIGKILL');
      for (const pid of workers) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      await exited;
    }
  });

  const listening = async (port) => {
    for (let i = 0; i < 100; i++) {
      const up = await new Promise((r) => {
        const s = net.connect(port, '127.0.0.1', () => (s.destroy(), r(true)));
        s.once('error', () => r(false));
      });
      if (up) return true;
      await sleep(50);
    }
    return false;
  };
  t.test(`nginx starts ${WORKERS} workers with kms keys from key-reference PEMs, OPENSSL_CONF only`, async (t) => {
    const started = Date.now();
    while (workerPids().length < WORKERS && master.exitCode === null && Date.now() - started < 15000) await sleep(50);
    t.ok(master.exitCode === null && (await listening(ports.ec)) && (await listening(ports.rsa)), `nginx listens: ${out}\n${errorLog()}`);
    t.equal(workerPids().length, WORKERS, 'all workers forked');
  });

  // One curl, many connections: URL globbing makes HANDSHAKES requests, up to
  // 8 at once; keepalive_timeout 0 gives each its own TLS connection.
  const fetchMany = (name, version, n = HANDSHAKES) => {
    const r = spawnSync(
      'curl',
      [
        '-sS',
        '--cacert',
        f('ca.pem'),
        `--tlsv${version}`,
        '--tls-max',
        version,
        '--resolve',
        `localhost:${ports[name]}:127.0.0.1`,
        '--parallel',
        '--parallel-max',
        '8',
        '-w',
        '%{http_code} %{ssl_verify_result} %{num_connects}\n',
        `https://localhost:${ports[name]}/[1-${n}]`,
      ],
      { encoding: 'utf8', timeout: 120000 },
    );
    const lines = r.stdout.split('\n').filter(Boolean);
    const served = lines.filter((l) => l.startsWith(`${name} `)).map((l) => Number(l.split(' ')[1]));
    const status = lines.filter((l) => /^\d{3} /.test(l));
    return { r, served, status };
  };

  const allSeen = new Set();
  for (const [name, key] of Object.entries(KEYS)) {
    for (const version of ['1.2', '1.3']) {
      t.test(`nginx with ${WORKERS} workers serves ${HANDSHAKES} TLS ${version} handshakes with the ${name.toUpperCase()} key kms:local/${key}`, async (t) => {
        const { r, served, status } = fetchMany(name, version);
        t.equal(r.status, 0, `curl exit status: ${r.stderr}\n${errorLog().slice(-2000)}`);
        t.equal(served.length, HANDSHAKES, 'every request answered by a worker');
        t.ok(
          status.length === HANDSHAKES && status.every((s) => s === '200 0 1'),
          'every response 200, certificate verified by curl, on a connection of its own',
        );
        const workers = new Set(served);
        for (const pid of workers) allSeen.add(pid);
        t.ok(
          [...workers].every((pid) => workerPids().includes(pid)),
          'answered by the forked workers, not the master',
        );
        t.equal(workers.size, WORKERS, `all ${WORKERS} workers signed (saw ${[...workers].join(', ')})`);
      });
    }
  }

  t.test('the workers reconnect after the agent restarts', async (t) => {
    await ctx.stopAgent();
    const down = fetchMany('ec', '1.3', 4);
    t.not(down.r.status, 0, 'handshakes fail while the agent is down');
    t.equal(master.exitCode, null, 'nginx keeps running');
    await ctx.startAgent();
    const { r, served, status } = fetchMany('rsa', '1.3', 40);
    t.equal(r.status, 0, r.stderr);
    t.equal(served.length, 40);
    t.ok(
      status.every((s) => s === '200 0 1'),
      'all verified',
    );
    t.equal(new Set(served).size, WORKERS, 'every worker works again');
  });

  t.test(`nginx with ${WORKERS} workers under 30 s of wrk load: every request a full handshake signed by kms keys, no error, no deadlock`, async (t) => {
    const seconds = Number(process.env.KMSBRIDGE_NGINX_LOAD_SECONDS ?? 30);
    const signs = () =>
      fs
        .readFileSync(debugLog, 'utf8')
        .split('\n')
        .filter((l) => /-> SIGN /.test(l)).length;
    const before = signs();
    // Connection: close makes every request a new connection, so a new handshake and a new signature.
    const r = spawnSync('wrk', ['-t2', '-c8', `-d${seconds}s`, '--timeout', '10s', '-H', 'Connection: close', `https://127.0.0.1:${ports.ec}/`], {
      encoding: 'utf8',
      timeout: (seconds + 60) * 1000,
    });
    t.equal(r.status, 0, `wrk: ${r.stderr}`);
    const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? 0);
    t.ok(requests > 100, `${requests} requests in ${seconds} s`);
    t.notMatch(r.stdout, /Socket errors|Non-2xx/, `no socket error, every response 2xx:\n${r.stdout}`);
    const signed = signs() - before;
    // The client's TLS stack checks every handshake signature against the certificate's key.
    t.ok(signed >= requests, `${signed} signatures by the workers for ${requests} handshakes`);
    t.comment(`wrk: ${requests} handshakes in ${seconds} s through ${WORKERS} workers, ${signed} kms signatures`);
    const after = fetchMany('ec', '1.3', 8);
    t.ok(after.r.status === 0 && after.status.every((x) => x === '200 0 1'), 'afterwards curl still gets verified answers: no worker is stuck');
    t.equal(master.exitCode, null, 'nginx kept running');
  });

  t.test('every worker opened its own agent connection and signed there; the master signed nothing', async (t) => {
    const log = fs.readFileSync(debugLog, 'utf8').split('\n');
    const byPid = (re) => {
      const m = new Map();
      for (const l of log) {
        const p = /^kmsbridge\[(\d+)\]/.exec(l);
        if (p && re.test(l)) m.set(Number(p[1]), (m.get(Number(p[1])) ?? 0) + 1);
      }
      return m;
    };
    const signs = byPid(/-> SIGN /);
    const connects = byPid(/connected to agent/);
    const total = [...signs.values()].reduce((a, b) => a + b, 0);
    t.ok(total >= 4 * HANDSHAKES + 40, `at least one signature per handshake (${total})`);
    for (const pid of workerPids()) {
      t.ok((signs.get(pid) ?? 0) > 0, `worker ${pid} signed ${signs.get(pid) ?? 0} times`);
      t.ok((connects.get(pid) ?? 0) > 0, `worker ${pid} connected to the agent itself`);
    }
    t.notOk(signs.has(master.pid), 'the master only loaded the keys');
  });

  t.test('the error log has nothing worse than a failed handshake', async (t) => {
    t.equal(master.exitCode, null, 'nginx is still running');
    t.notMatch(errorLog(), /\[(emerg|alert)\]|signal \d+ \(core dumped\)|exited on signal/);
    t.equal(allSeen.size, WORKERS);
  });
}
