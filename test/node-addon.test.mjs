// kmsbridge in-process in Node: the provider registered in Node's own OpenSSL,
// the KeyService in a worker thread behind the N-API bridge. Real Node TLS,
// real clients (curl, openssl s_client, Node tls.connect) that verify the
// certificate; signatures verified by the system openssl.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, execFile } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { sandbox, cliOk, startAgent, opensslOk, openssl, ROOT } from './lib/env.mjs';
import kmsbridge from '../dist/index.js';

const box = sandbox(t, { keyrings: { local: { type: 'local' }, slow: { type: 'local', inject_latency_ms: 3000 } } });
Object.assign(process.env, { KMSBRIDGE_CONFIG: box.config, KMSBRIDGE_AGENT_SOCK: box.socket });
// The agent is only the certificate authority's helper here (openssl req through the provider).
await startAgent(t, box);
const modules = cliOk(t, box, ['modules-dir']).trim();
const provider = ['-provider-path', modules, '-provider', 'default', '-provider', 'kmsbridge'];

const keys = {};
for (const spec of ['rsa-2048', 'ec-p256', 'ec-p384', 'ed25519']) {
  const uri = cliOk(t, box, ['keys', 'create', spec, '--keyring', 'local', '--type', spec]).trim();
  const pub = box.file(`${spec}.pub.pem`);
  cliOk(t, box, ['keys', 'export', uri, '-o', pub]);
  const cert = box.file(`${spec}.crt`);
  const r = openssl(
    ['req', ...provider, '-new', '-x509', '-key', uri, '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-days', '2', '-out', cert],
    { env: box.env },
  );
  if (r.status !== 0) throw new Error(`openssl req for ${spec}: ${r.stderr}`);
  keys[spec] = { uri, pub, cert };
}

const kb = await kmsbridge.load();
t.teardown(() => kb.close());

function run(cmd, args, opts = {}) {
  return new Promise((resolve) =>
    execFile(cmd, args, { timeout: 60_000, ...opts }, (err, stdout, stderr) => resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr })),
  );
}

/** Starts test/fixtures/https-server.mjs and resolves once it listens. */
async function startServer(t, route, spec, env = {}) {
  const child = spawn(process.execPath, [path.join(ROOT, 'test/fixtures/https-server.mjs'), route, keys[spec].uri, keys[spec].cert], {
    env: { ...box.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines = [];
  let waiters = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      lines.push(line);
      waiters = waiters.filter((w) => !w(line));
    }
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  t.teardown(() => child.kill('SIGKILL'));
  const next = (pred) =>
    new Promise((resolve) => {
      const found = lines.find(pred);
      if (found) return resolve(found);
      waiters.push((l) => (pred(l) ? (resolve(l), true) : false));
    });
  const { port } = await Promise.race([next((l) => l.port), new Promise((_, rej) => child.once('exit', () => rej(new Error(`server exited: ${stderr}`))))]);
  return {
    child,
    port,
    next,
    lines,
    stats: () => (child.stdin.write('stats\n'), next((l) => 'served' in l && lines.indexOf(l) >= 0 && !l.seen && (l.seen = true))),
  };
}

const curl = (port, spec, v) =>
  run('curl', ['-sS', `--tlsv${v}`, '--tls-max', v, '--cacert', keys[spec].cert, '--resolve', `localhost:${port}:127.0.0.1`, `https://localhost:${port}/`]);
const sClient = (port, spec, v) =>
  run('sh', [
    '-c',
    `echo Q | openssl s_client -connect 127.0.0.1:${port} -servername localhost -tls${v.replace('.', '_')} -CAfile ${keys[spec].cert} -verify_return_error -verify_hostname localhost 2>&1`,
  ]);

for (const spec of ['rsa-2048', 'ec-p256', 'ed25519']) {
  t.test(
    `a Node https server with a ${spec} kms key (keyRef route) serves TLS 1.2 and 1.3 to curl, openssl s_client and Node, each verifying the certificate`,
    async (t) => {
      const srv = await startServer(t, 'keyref', spec);
      for (const v of spec === 'ed25519' ? ['1.3'] : ['1.2', '1.3']) {
        const c = await curl(srv.port, spec, v);
        t.equal(c.code, 0, `curl TLS ${v}: ${c.stderr.trim()}`);
        t.match(c.stdout, /^hello \d+/);
        const s = await sClient(srv.port, spec, v);
        t.match(s.stdout, /Verify return code: 0 \(ok\)/, `s_client TLS ${v} verifies the chain`);
        if (spec.startsWith('rsa'))
          t.match(s.stdout, v === '1.3' ? /Peer signature type: RSA-PSS/ : /Peer signature type: RSA/, `TLS ${v} RSA signature scheme`);
      }
      const n = await run(process.execPath, [path.join(ROOT, 'test/fixtures/tls-clients.mjs'), String(srv.port), keys[spec].cert, '3']);
      t.same(JSON.parse(n.stdout), { ok: 3, failed: 0, errors: [] }, 'Node tls.connect verifies too');
    },
  );
}

for (const spec of ['rsa-2048', 'ec-p256', 'ed25519']) {
  t.test(
    `a Node https server with a ${spec} kms key (ENGINE route, privateKeyEngine: 'kmsbridge') serves TLS 1.2 and 1.3 to curl, openssl s_client and Node through the in-process bridge`,
    async (t) => {
      // No agent at this socket: every key operation must take the N-API bridge to the worker.
      const srv = await startServer(t, 'engine', spec, { KMSBRIDGE_AGENT_SOCK: box.file('no-agent-here.sock') });
      for (const v of spec === 'ed25519' ? ['1.3'] : ['1.2', '1.3']) {
        const c = await curl(srv.port, spec, v);
        t.equal(c.code, 0, `curl TLS ${v}: ${c.stderr.trim()}`);
        t.match(c.stdout, /^hello \d+/);
        const s = await sClient(srv.port, spec, v);
        t.match(s.stdout, /Verify return code: 0 \(ok\)/, `s_client TLS ${v} verifies the chain`);
        if (spec.startsWith('rsa')) t.match(s.stdout, /Peer signature type: RSA-PSS/, `TLS ${v}: the key manager signed PSS, never raw RSA`);
        if (spec.startsWith('ec')) t.match(s.stdout, /Peer signature type: ECDSA/, `TLS ${v} ECDSA`);
      }
      const n = await run(process.execPath, [path.join(ROOT, 'test/fixtures/tls-clients.mjs'), String(srv.port), keys[spec].cert, '3']);
      t.same(JSON.parse(n.stdout), { ok: 3, failed: 0, errors: [] }, 'Node tls.connect verifies too');
    },
  );
}

t.test('100 concurrent handshakes on the ENGINE route all verify; the event loop stall per handshake is reported', async (t) => {
  for (const spec of ['ec-p256', 'rsa-2048']) {
    const srv = await startServer(t, 'engine', spec);
    await srv.stats(); // reset the stall histogram after start-up
    const r = await run(process.execPath, [path.join(ROOT, 'test/fixtures/tls-clients.mjs'), String(srv.port), keys[spec].cert, '100']);
    t.same(JSON.parse(r.stdout), { ok: 100, failed: 0, errors: [] }, `${spec}: 100 of 100 verified`);
    const s = await srv.stats();
    t.equal(s.served, 100);
    t.comment(
      `${spec} (ENGINE): event loop stall during 100 handshakes: mean ${s.stallMeanMs.toFixed(2)} ms, p99 ${s.stallP99Ms.toFixed(2)} ms, max ${s.stallMaxMs.toFixed(2)} ms`,
    );
  }
});

t.test('crypto.sign and createSign with kb.privateKey: openssl verifies with the exported public key', async (t) => {
  const msg = Buffer.from('signed in-process, verified by openssl\n');
  fs.writeFileSync(box.file('node-msg'), msg);
  const cases = [
    ['rsa-2048', () => crypto.sign('sha256', msg, kb.privateKey(keys['rsa-2048'].uri)), ['-sha256']],
    [
      'rsa-2048 PSS',
      () => crypto.sign('sha384', msg, { key: kb.privateKey(keys['rsa-2048'].uri), padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 }),
      ['-sha384', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:48'],
    ],
    ['ec-p384', () => crypto.createSign('sha384').update(msg).sign(kb.privateKey(keys['ec-p384'].uri)), ['-sha384']],
    ['ec-p256', () => crypto.sign('sha256', msg, kb.privateKey(keys['ec-p256'].uri)), ['-sha256']],
  ];
  for (const [name, sign, dgst] of cases) {
    const spec = name.split(' ')[0];
    fs.writeFileSync(box.file('node-sig'), sign());
    const r = openssl(['dgst', ...dgst, '-verify', keys[spec].pub, '-signature', box.file('node-sig'), box.file('node-msg')]);
    t.match(r.stdout.toString(), /Verified OK/, `${name}: ${r.stderr.trim()}`);
  }
  fs.writeFileSync(box.file('node-sig'), crypto.sign(null, msg, kb.privateKey(keys.ed25519.uri)));
  t.equal(
    openssl(['pkeyutl', '-verify', '-pubin', '-inkey', keys.ed25519.pub, '-rawin', '-in', box.file('node-msg'), '-sigfile', box.file('node-sig')]).status,
    0,
    'Ed25519',
  );
});

t.test('crypto.privateDecrypt (OAEP SHA-256) decrypts what openssl encrypted', async (t) => {
  const secret = crypto.randomBytes(32);
  const ct = opensslOk(
    t,
    ['pkeyutl', '-encrypt', '-pubin', '-inkey', keys['rsa-2048'].pub, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256'],
    { input: secret },
  );
  const pt = crypto.privateDecrypt({ key: kb.privateKey(keys['rsa-2048'].uri), oaepHash: 'sha256', padding: crypto.constants.RSA_PKCS1_OAEP_PADDING }, ct);
  t.same(pt, secret);
});

t.test('kb.describe gives the key details without touching Node calls that abort on such keys', async (t) => {
  const d = await kb.describe(keys['ec-p384'].uri);
  t.match(d, { keyType: 'ec', curve: 'P-384', bits: 384 });
  t.same(d.publicKey, opensslOk(t, ['pkey', '-pubin', '-in', keys['ec-p384'].pub, '-outform', 'DER']));
  await t.rejects(kb.describe('kms:local/absent'), { code: 1, message: /key 'absent' not found/ });
});

t.test('mutual TLS: a Node client authenticates with a kms key, checked by openssl s_server', async (t) => {
  // The server side is plain openssl with a file key; it requires and verifies the client's certificate.
  opensslOk(t, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', box.file('server.key')]);
  opensslOk(t, [
    'req',
    '-new',
    '-x509',
    '-key',
    box.file('server.key'),
    '-subj',
    '/CN=localhost',
    '-addext',
    'subjectAltName=DNS:localhost',
    '-days',
    '1',
    '-out',
    box.file('server.crt'),
  ]);
  const srv = spawn(
    'openssl',
    [
      's_server',
      '-accept',
      '127.0.0.1:0',
      '-naccept',
      '1',
      '-cert',
      box.file('server.crt'),
      '-key',
      box.file('server.key'),
      '-Verify',
      '1',
      '-verify_return_error',
      '-CAfile',
      keys['rsa-2048'].cert,
      '-www',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.teardown(() => srv.kill());
  let out = '';
  const port = await new Promise((resolve, reject) => {
    srv.stdout.on('data', (d) => {
      out += d;
      const m = /ACCEPT (?:.*:)?(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    srv.once('exit', () => reject(new Error(out)));
  });
  const tls = await import('node:tls');
  const body = await new Promise((resolve, reject) => {
    const s = tls.connect(
      {
        host: '127.0.0.1',
        port,
        servername: 'localhost',
        ca: fs.readFileSync(box.file('server.crt')),
        key: kb.keyRef(keys['rsa-2048'].uri),
        cert: fs.readFileSync(keys['rsa-2048'].cert),
      },
      () => s.write('GET / HTTP/1.0\r\n\r\n'),
    );
    let b = '';
    s.on('data', (d) => (b += d));
    s.on('end', () => resolve(b));
    s.on('error', reject);
  });
  t.match(body, /Client certificate[\s\S]*CN ?= ?localhost/, 's_server saw and verified the client certificate');
});

t.test('100 concurrent handshakes on the keyRef route all verify; the event loop stall per handshake is reported', async (t) => {
  for (const spec of ['ec-p256', 'rsa-2048']) {
    const srv = await startServer(t, 'keyref', spec);
    await srv.stats(); // reset the stall histogram after start-up
    const r = await run(process.execPath, [path.join(ROOT, 'test/fixtures/tls-clients.mjs'), String(srv.port), keys[spec].cert, '100']);
    t.same(JSON.parse(r.stdout), { ok: 100, failed: 0, errors: [] }, `${spec}: 100 of 100 verified`);
    const s = await srv.stats();
    t.equal(s.served, 100);
    t.comment(
      `${spec}: event loop stall during 100 handshakes: mean ${s.stallMeanMs.toFixed(2)} ms, p99 ${s.stallP99Ms.toFixed(2)} ms, max ${s.stallMaxMs.toFixed(2)} ms`,
    );
  }
});

t.test('the worker dies mid-handshake: that handshake fails with a TLS error, the server keeps running, later handshakes succeed', async (t) => {
  const srv = await startServer(t, 'keyref', 'ec-p256', { KMSBRIDGE_FAULT_WORKER_EXIT_ON: 'SIGN' });
  const first = await curl(srv.port, 'ec-p256', '1.3');
  t.not(first.code, 0, `the handshake in flight fails: ${first.stderr.trim()}`);
  let ok = false;
  for (let i = 0; i < 50 && !ok; i++) {
    await new Promise((r) => setTimeout(r, 100));
    ok = (await curl(srv.port, 'ec-p256', '1.3')).code === 0;
  }
  t.ok(ok, 'a later handshake succeeds once the worker has restarted');
  t.equal(srv.child.exitCode, null, 'the server process is still running');
  const err = await srv.next((l) => l.tlsClientError);
  t.match(err.tlsClientError, /.+/, `the server saw a TLS error: ${err.tlsClientError}`);
});

t.test('a hung key manager gives the timeout error, and no deadlock', async (t) => {
  const slowUri = cliOk(t, box, ['keys', 'create', 'slowkey', '--keyring', 'slow', '--type', 'ec-p256']).trim();
  const script = `
    import crypto from 'node:crypto';
    import kmsbridge from ${JSON.stringify(path.join(ROOT, 'dist/index.js'))};
    const kb = await kmsbridge.load({ timeoutMs: 500 });
    const started = Date.now();
    let error = '';
    try { crypto.sign('sha256', Buffer.from('x'), kb.privateKey(${JSON.stringify(slowUri)})); } catch (e) { error = e.message; }
    const tookMs = Date.now() - started;
    const fast = crypto.sign('sha256', Buffer.from('x'), kb.privateKey(${JSON.stringify(keys['ec-p256'].uri)})).length > 0;
    console.log(JSON.stringify({ error, tookMs, fast }));
    await kb.close();`;
  fs.writeFileSync(box.file('hung.mjs'), script);
  const r = await run(process.execPath, [box.file('hung.mjs')], { env: box.env });
  if (!r.stdout.trim()) t.fail(`no output; exit ${r.code}: ${r.stderr}`);
  const out = JSON.parse(r.stdout);
  t.match(out.error, /cannot load kms:slow\/slowkey: .*did not answer within 500 ms/, out.error);
  t.ok(out.tookMs < 5000, `failed after ${out.tookMs} ms, bounded by the timeout`);
  t.ok(out.fast, 'the next key operation works');
});

t.test('a kms key used on the KeyService worker thread itself fails at once with the re-entrancy error', async (t) => {
  // This test plays the KeyService worker: it binds the bridge on its own thread, then uses a kms key there.
  const script = `
    const { parentPort } = require('node:worker_threads');
    const crypto = require('node:crypto');
    const addon = require('node-gyp-build')(${JSON.stringify(ROOT)});
    const { keyRefPem } = require(${JSON.stringify(path.join(ROOT, 'dist/keyref.js'))});
    addon.bridgeBind(() => {});
    addon.useChannel('bridge', 2000);
    const started = Date.now();
    let message = '';
    try { crypto.createPrivateKey(keyRefPem('kms:local/whatever')); } catch (e) { message = e.message; }
    parentPort.postMessage({ message, tookMs: Date.now() - started });
    addon.bridgeUnbind();`;
  const r = await run(
    process.execPath,
    [
      '-e',
      `const { Worker } = require('node:worker_threads'); const w = new Worker(${JSON.stringify(script)}, { eval: true }); w.on('message', (m) => { console.log(JSON.stringify(m)); process.exit(0); }); w.on('error', (e) => { console.log(JSON.stringify({ message: 'worker error ' + e.message })); process.exit(1); });`,
    ],
    { env: { ...box.env, KMSBRIDGE_DEBUG: '1' } },
  );
  const out = JSON.parse(r.stdout.trim().split('\n').pop());
  t.ok(out.tookMs < 1000, `failed at once (${out.tookMs} ms), no deadlock`);
  t.match(r.stderr + out.message, /KeyService worker thread itself/, 'the re-entrancy error is reported');
});
