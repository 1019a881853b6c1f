// Faults between the provider and the KeyService, and under the key store,
// that the other suites do not inject: a peer on the agent socket answering
// garbage, the agent dying with a request in flight and coming back, the
// socket file removed or replaced while an application uses it, and a full
// disk while a key is created. (A hanging backend is in agent.test.mjs; the
// agent killed, stopped and restarted under a signing loop in
// provider-errors.test.mjs; a corrupt key file and concurrent creates in
// local-store.test.mjs.)
//
// The stand-in is a proxy written here: it listens on its own Unix socket,
// passes frames to a real agent, and rewrites or withholds the replies it is
// told to. The provider is what the system openssl loads; when the ASan build
// exists (test/asan.test.mjs makes it) the garbage replies are also fed to it.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ROOT, sandbox, cli, cliOk } from './lib/env.mjs';
import { CLI, MODULES, keyRefPem, missing } from './provider-harness.mjs';
import { session, freePort } from './sanitizers/scenarios.mjs';
import { FrameReader, encodeFrame, MsgType, Tag } from '../dist/wire/codec.js';

const TIMEOUT_MS = 3000; // KMSBRIDGE_TIMEOUT_MS for the provider in these tests
const ASAN_MODULES = path.join(ROOT, 'build', 'asan', 'ossl-modules');
const LIBASAN = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout?.trim();

/** A proxy on |listenPath| to the agent at |agentPath|; |fault| decides what happens to each reply. */
async function standIn(listenPath, agentPath) {
  const st = { fault: null, faulted: 0, conns: new Set(), server: null };
  const onConn = (client) => {
    const upstream = net.connect(agentPath);
    st.conns.add(client).add(upstream);
    const types = new Map(); // request id -> type
    const up = new FrameReader();
    const down = new FrameReader();
    client.on('data', (d) => {
      try {
        for (const f of up.push(d)) {
          types.set(f.id, f.type);
          if (st.fault === 'die' && f.type === MsgType.SIGN) {
            st.faulted++;
            st.kill(); // the agent dies with this request in flight
            return;
          }
          upstream.write(encodeFrame(f));
        }
      } catch {
        client.destroy();
      }
    });
    upstream.on('data', (d) => {
      for (const f of down.push(d)) {
        const ofType = f.type & 0x7fff;
        const fault =
          st.fault && st.fault !== 'die' && (ofType === MsgType.SIGN || (st.fault.startsWith('hello') && ofType === MsgType.HELLO)) ? st.fault : null;
        if (!fault) {
          client.write(encodeFrame(f));
          continue;
        }
        st.faulted++;
        const good = encodeFrame(f);
        const bytes = {
          garbage: Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'),
          oversized: Buffer.from([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0x80, 0x11, 0, 0]),
          undersized: Buffer.from([0, 0, 0, 3, 0, 0, 0]),
          'bad field': (() => {
            const b = Buffer.concat([good, Buffer.from([0x00, 0x40, 0xff, 0xff, 0xff, 0xf0])]);
            b.writeUInt32BE(b.length - 4, 0);
            return b;
          })(),
          'wrong id': (() => {
            const b = Buffer.from(good);
            b.writeUInt32BE((f.id + 7) >>> 0, 4);
            return b;
          })(),
          'wrong type': (() => {
            const b = Buffer.from(good);
            b.writeUInt16BE(0x8010, 8);
            return b;
          })(),
          'unknown status': encodeFrame({
            id: f.id,
            type: f.type,
            status: 999,
            fields: [{ tag: Tag.MESSAGE, value: `weird \u0007\u001b[31m ${'x'.repeat(4000)}` }],
          }),
          'no result': encodeFrame({ id: f.id, type: f.type, status: 0, fields: [] }),
          'huge result': encodeFrame({ id: f.id, type: f.type, status: 0, fields: [{ tag: Tag.RESULT, value: Buffer.alloc(1000000, 0x30) }] }),
          'truncated then close': good.subarray(0, Math.max(5, good.length - 3)),
          close: Buffer.alloc(0),
          hang: null,
          'hello garbage': Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'),
          'hello version 2': (() => {
            const b = Buffer.from(good);
            const i = b.indexOf(Buffer.from([0x00, 0x01, 0, 0, 0, 4, 0, 0, 0, 1]));
            if (i >= 0) b[i + 9] = 2;
            return b;
          })(),
        }[fault];
        if (bytes === null) continue; // hang: answer nothing, keep the connection open
        client.write(bytes);
        if (/close|garbage|oversized|undersized/.test(fault)) client.end();
      }
    });
    const drop = () => {
      client.destroy();
      upstream.destroy();
      st.conns.delete(client);
      st.conns.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  };
  st.listen = () =>
    new Promise((resolve, reject) => {
      st.server = net.createServer(onConn);
      st.server.once('error', (e) => (st.server.close(), (st.server = null), reject(e)));
      st.server.listen(listenPath, () => resolve());
    });
  st.kill = () => {
    st.server?.close();
    st.server = null;
    for (const c of st.conns) c.destroy();
    st.conns.clear();
    try {
      fs.unlinkSync(listenPath);
    } catch {}
  };
  await st.listen();
  return st;
}

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await session(t, { CLI, keyRefPem });
  const proxySock = ctx.file('standin.sock');
  const st = await standIn(proxySock, ctx.sock);
  t.teardown(() => st.kill());
  const env = { ...ctx.env, KMSBRIDGE_AGENT_SOCK: proxySock, KMSBRIDGE_TIMEOUT_MS: String(TIMEOUT_MS) };
  const signArgs = (modules) => [
    'pkeyutl',
    '-sign',
    '-provider-path',
    modules,
    '-provider',
    'default',
    '-provider',
    'kmsbridge',
    '-inkey',
    'kms:local/web',
    '-in',
    ctx.file('msg.sha256'),
    '-out',
    ctx.file('f.sig'),
  ];
  // async, so the stand-in in this process keeps serving while openssl runs
  const run = (args, extraEnv = {}) =>
    new Promise((resolve) => {
      const started = Date.now();
      const p = spawn('openssl', args, { cwd: ctx.dir, env: { ...env, ...extraEnv } });
      let stderr = '';
      p.stderr.on('data', (d) => (stderr += d));
      const killer = setTimeout(() => p.kill('SIGKILL'), 60_000);
      p.on('close', (status, signal) => (clearTimeout(killer), resolve({ status, signal, stderr, ms: Date.now() - started })));
    });

  const faults = {
    garbage: /invalid length|malformed reply|broke/,
    oversized: /invalid length/,
    undersized: /invalid length|broke/,
    'bad field': /malformed reply/,
    'wrong id': /unexpected reply/,
    'wrong type': /unexpected reply/,
    'unknown status': /weird/,
    'no result': /kmsbridge/,
    'huge result': /kmsbridge/,
    'truncated then close': /broke/,
    close: /broke|closed/,
    hang: new RegExp(`did not answer within ${TIMEOUT_MS} ms`),
    'hello garbage': /invalid length|malformed|broke|cannot reach|refused/,
    'hello version 2': /speaks wire version 2/,
  };
  const asan = fs.existsSync(path.join(ASAN_MODULES, 'kmsbridge.so')) && LIBASAN && fs.existsSync(LIBASAN);
  const builds = [['kmsbridge.so', MODULES, {}]];
  if (asan)
    builds.push([
      'the ASan kmsbridge.so',
      ASAN_MODULES,
      { LD_PRELOAD: fs.realpathSync(LIBASAN), ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=1:exitcode=86', UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1' },
    ]);

  t.test('through the stand-in with no fault, signing works (the proxy is transparent)', async (t) => {
    st.fault = null;
    const r = await run(signArgs(MODULES));
    t.equal(r.status, 0, r.stderr);
  });

  for (const [label, modules, extraEnv] of builds) {
    t.test(`a peer answering garbage: ${label} fails cleanly, names the socket, never crashes or hangs`, async (t) => {
      for (const [fault, expect] of Object.entries(faults)) {
        st.fault = fault;
        const before = st.faulted;
        const r = await run(signArgs(modules), extraEnv);
        t.ok(st.faulted > before, `${fault}: the fault was injected`);
        t.equal(r.signal, null, `${fault}: openssl was not killed by a signal`);
        t.not(r.status, 0, `${fault}: openssl reports failure`);
        t.notOk(/Sanitizer|runtime error/.test(r.stderr), `${fault}: no sanitizer report`);
        t.ok(r.ms < TIMEOUT_MS * 2 + 10_000, `${fault}: done in ${r.ms} ms`);
        t.match(r.stderr, expect, `${fault}: the error says what went wrong`);
        if (!/hello version|unknown status|result/.test(fault)) t.match(r.stderr, /standin\.sock/, `${fault}: the error names the socket`);
        t.notOk(/[\u0007\u001b]/.test(r.stderr), `${fault}: no control character from the peer reaches the terminal`);
      }
      st.fault = null;
      const ok = await run(signArgs(modules), extraEnv);
      t.equal(ok.status, 0, `after every fault the next signature works: ${ok.stderr}`);
    });
  }

  // ---- a long-lived application: s_server keeps its provider and key across faults ----
  t.test(
    's_server: agent killed mid-request, restarted, socket removed, replaced by a file, by a new agent — errors are prompt, service recovers in-process',
    async (t) => {
      st.fault = null;
      const cert = ctx.file('srv.pem');
      const mk = await run([
        'req',
        '-x509',
        '-new',
        '-provider-path',
        MODULES,
        '-provider',
        'default',
        '-provider',
        'kmsbridge',
        '-key',
        'kms:local/web',
        '-subj',
        '/CN=localhost',
        '-out',
        cert,
      ]);
      t.equal(mk.status, 0, mk.stderr);
      const port = await freePort();
      const srv = spawn(
        'openssl',
        [
          's_server',
          '-provider-path',
          MODULES,
          '-provider',
          'default',
          '-provider',
          'kmsbridge',
          '-accept',
          `127.0.0.1:${port}`,
          '-key',
          'kms:local/web',
          '-cert',
          cert,
          '-www',
          '-tls1_3',
        ],
        { cwd: ctx.dir, env, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let log = '';
      srv.stdout.on('data', (d) => (log += d));
      srv.stderr.on('data', (d) => (log += d));
      t.teardown(() => srv.kill('SIGKILL'));
      for (let i = 0; i < 600 && !/ACCEPT/.test(log); i++) await new Promise((r) => setTimeout(r, 50));
      const handshake = () =>
        new Promise((resolve) => {
          const started = Date.now();
          const c = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', cert, '-verify_return_error', '-brief'], { env: ctx.env });
          let err = '';
          c.stderr.on('data', (d) => (err += d));
          c.stdin.end('GET / HTTP/1.0\r\n\r\n');
          c.stdout.resume();
          const killer = setTimeout(() => c.kill('SIGKILL'), 60_000);
          c.on('close', (status) => (clearTimeout(killer), resolve({ ok: status === 0 && /Verification: OK/.test(err), ms: Date.now() - started, err })));
        });
      const alive = () => srv.exitCode === null && srv.signalCode === null;
      let h = await handshake();
      t.ok(h.ok, `first handshake: ${h.err}`);

      st.fault = 'die';
      h = await handshake();
      t.notOk(h.ok, 'the handshake whose signature was in flight when the agent died fails');
      t.ok(h.ms < TIMEOUT_MS + 5000, `…promptly (${h.ms} ms; timeout ${TIMEOUT_MS} ms)`);
      t.match(log, /kmsbridge/, 's_server printed the kmsbridge error');
      t.ok(alive(), 's_server is still running');
      st.fault = null;
      await st.listen();
      h = await handshake();
      t.ok(h.ok, `the agent is back: the next handshake reconnects and succeeds: ${h.err}`);

      fs.unlinkSync(proxySock);
      h = await handshake();
      t.ok(h.ok, 'socket file removed: the pooled connection still serves');
      st.kill(); // and now the agent goes away too: nothing to connect to
      h = await handshake();
      t.notOk(h.ok, 'socket file removed and agent gone: the handshake fails');
      t.ok(h.ms < 10_000, `…promptly (${h.ms} ms)`);
      t.match(log, /cannot reach the kmsbridge agent at .*standin\.sock/);

      fs.writeFileSync(proxySock, 'not a socket');
      h = await handshake();
      t.notOk(h.ok, 'socket path replaced by a regular file: the handshake fails');
      t.ok(h.ms < 10_000, `…promptly (${h.ms} ms)`);
      t.ok(alive(), 's_server is still running');

      fs.unlinkSync(proxySock);
      await st.listen();
      h = await handshake();
      t.ok(h.ok, `a new agent on the path: s_server serves again without a restart: ${h.err}`);
      t.ok(alive());
    },
  );

  // ---- disk full while creating a key --------------------------------------------------------
  t.test('disk full while creating a key: a clear error, no partial file, the store stays readable and usable', async (t) => {
    const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'kbfull-'));
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', mnt]);
    if (m.status !== 0) {
      fs.rmdirSync(mnt);
      t.skip(`cannot mount a tmpfs here (${m.stderr}); run as root`);
      return;
    }
    t.teardown(() => {
      spawnSync('umount', [mnt]);
      fs.rmSync(mnt, { recursive: true, force: true });
    });
    const store = path.join(mnt, 'keys');
    const box = sandbox(t, { keyrings: { local: { type: 'local', path: store } } });
    const uri = cliOk(t, box, ['keys', 'create', 'first', '--keyring', 'local', '--type', 'ec-p256']).trim();
    // fill the filesystem: a filler file grows until ENOSPC
    const filler = path.join(mnt, 'filler');
    const fd = fs.openSync(filler, 'w');
    const chunk = Buffer.alloc(4096, 1);
    try {
      for (;;) fs.writeSync(fd, chunk);
    } catch (e) {
      t.equal(e.code, 'ENOSPC', 'the filesystem is full');
    }
    const before = fs.readdirSync(store).sort();
    let attempts = 0;
    // try full, then with 4 KiB free (a key file then starts but cannot be finished)
    for (const freeBytes of [0, 4096]) {
      if (freeBytes) fs.ftruncateSync(fd, fs.fstatSync(fd).size - freeBytes);
      for (const type of ['ec-p256', 'rsa-4096']) {
        attempts++;
        const r = cli(box, ['keys', 'create', `k${attempts}`, '--keyring', 'local', '--type', type]);
        if (r.status === 0) {
          // it fitted (4 KiB is enough for a small key): that is fine, drop it again
          cliOk(t, box, ['keys', 'delete', r.stdout.trim()]);
          continue;
        }
        t.match(r.stderr, /no space|ENOSPC|disk|full/i, `${type} with ${freeBytes} bytes free: the error says the disk is full: ${r.stderr.trim()}`);
        t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
        t.same(fs.readdirSync(store).sort(), before, `${type} with ${freeBytes} bytes free: no partial or temporary file left`);
      }
    }
    fs.closeSync(fd);
    const list = cliOk(t, box, ['keys', 'list', '--keyring', 'local']);
    t.match(list, /kms:local\/first/, 'the store is still readable');
    const pub = cliOk(t, box, ['keys', 'export', uri]);
    t.match(pub, /BEGIN PUBLIC KEY/);
    fs.unlinkSync(filler);
    const again = cli(box, ['keys', 'create', 'after', '--keyring', 'local', '--type', 'ec-p256']);
    t.equal(again.status, 0, `with space again, creation works: ${again.stderr}`);
  });
}
