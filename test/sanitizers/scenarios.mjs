// The openssl CLI session the sanitizer and memcheck tests run with kmsbridge
// loaded: sign with each key type, req -x509, OAEP decrypt, ECDH derive,
// one s_server handshake, and the error paths (unknown key, malformed URI,
// agent gone). Each scenario runs the instrumented openssl through |run| and
// checks its result with the plain system openssl (no kmsbridge).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * |tool| = { name, flags: openssl provider args, command(args) -> [exe, argv], env, findings(stderr) -> string[] }.
 * Returns [{ name, run(t, ctx) }].
 */
export function scenarios(tool, { quick = false } = {}) {
  const plain = (ctx, args, opts = {}) =>
    spawnSync('openssl', args, { cwd: ctx.dir, env: ctx.env, encoding: opts.encoding ?? 'utf8', input: opts.input, timeout: 60_000 });
  // runs openssl under the tool; fails the test on a non-zero exit (unless expected) or any finding
  const inst = (t, ctx, args, { expectFail = false, timeout = 300_000 } = {}) => {
    const [exe, argv] = tool.command(args);
    const r = spawnSync(exe, argv, { cwd: ctx.dir, env: { ...ctx.env, ...tool.env }, encoding: 'utf8', timeout });
    const findings = tool.findings(r.stderr ?? '');
    t.same(findings, [], `${tool.name}: no finding in openssl ${args[0]}`);
    if (expectFail) t.not(r.status, 0, `openssl ${args[0]} fails as it should`);
    else t.equal(r.status, 0, `openssl ${args[0]} exits 0: ${r.stderr?.slice(-2000)}`);
    return r;
  };
  const f = (ctx, n) => ctx.file(n);
  const list = [
    {
      name: 'ECDSA P-256 signature (pkeyutl), verified by plain openssl',
      run: (t, ctx) => {
        inst(t, ctx, ['pkeyutl', '-sign', ...tool.flags, '-inkey', 'kms:local/web', '-in', f(ctx, 'msg.sha256'), '-out', f(ctx, 'ec.sig')]);
        const v = plain(ctx, ['pkeyutl', '-verify', '-pubin', '-inkey', f(ctx, 'web.pub.pem'), '-in', f(ctx, 'msg.sha256'), '-sigfile', f(ctx, 'ec.sig')]);
        t.equal(v.status, 0, v.stdout + v.stderr);
      },
    },
    {
      name: 'RSA-PSS signature (dgst), verified by plain openssl',
      run: (t, ctx) => {
        inst(t, ctx, [
          'dgst',
          '-sha256',
          ...tool.flags,
          '-sign',
          'kms:local/rsa',
          '-sigopt',
          'rsa_padding_mode:pss',
          '-sigopt',
          'rsa_pss_saltlen:digest',
          '-out',
          f(ctx, 'pss.sig'),
          f(ctx, 'msg.txt'),
        ]);
        const v = plain(ctx, [
          'dgst',
          '-sha256',
          '-verify',
          f(ctx, 'rsa.pub.pem'),
          '-sigopt',
          'rsa_padding_mode:pss',
          '-sigopt',
          'rsa_pss_saltlen:digest',
          '-signature',
          f(ctx, 'pss.sig'),
          f(ctx, 'msg.txt'),
        ]);
        t.equal(v.status, 0, v.stdout + v.stderr);
      },
    },
    {
      name: 'Ed25519 signature (pkeyutl -rawin), verified by plain openssl',
      run: (t, ctx) => {
        inst(t, ctx, ['pkeyutl', '-sign', ...tool.flags, '-rawin', '-inkey', 'kms:local/ed', '-in', f(ctx, 'msg.txt'), '-out', f(ctx, 'ed.sig')]);
        const v = plain(ctx, [
          'pkeyutl',
          '-verify',
          '-pubin',
          '-rawin',
          '-inkey',
          f(ctx, 'ed.pub.pem'),
          '-in',
          f(ctx, 'msg.txt'),
          '-sigfile',
          f(ctx, 'ed.sig'),
        ]);
        t.equal(v.status, 0, v.stdout + v.stderr);
      },
    },
    {
      name: 'req -x509 with a key-reference PEM, the certificate verified by plain openssl',
      run: (t, ctx) => {
        inst(t, ctx, [
          'req',
          '-x509',
          '-new',
          ...tool.flags,
          '-key',
          f(ctx, 'web.ref.pem'),
          '-subj',
          '/CN=localhost',
          '-days',
          '2',
          '-out',
          f(ctx, 'cert.pem'),
        ]);
        const v = plain(ctx, ['verify', '-CAfile', f(ctx, 'cert.pem'), f(ctx, 'cert.pem')]);
        t.equal(v.status, 0, v.stdout + v.stderr);
        const pub = plain(ctx, ['x509', '-in', f(ctx, 'cert.pem'), '-noout', '-pubkey']);
        t.equal(pub.stdout, fs.readFileSync(f(ctx, 'web.pub.pem'), 'utf8'), 'the certificate holds the kms key');
      },
    },
    {
      name: 'RSA-OAEP decryption of what plain openssl encrypted',
      run: (t, ctx) => {
        const opts = ['-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256'];
        const e = plain(ctx, ['pkeyutl', '-encrypt', '-pubin', '-inkey', f(ctx, 'rsa.pub.pem'), '-in', f(ctx, 'msg.txt'), '-out', f(ctx, 'ct.bin'), ...opts]);
        t.equal(e.status, 0, e.stderr);
        inst(t, ctx, ['pkeyutl', '-decrypt', ...tool.flags, '-inkey', 'kms:local/rsa', '-in', f(ctx, 'ct.bin'), '-out', f(ctx, 'pt.txt'), ...opts]);
        t.same(fs.readFileSync(f(ctx, 'pt.txt')), fs.readFileSync(f(ctx, 'msg.txt')));
      },
    },
    {
      name: 'ECDH derive equals what plain openssl derives from the other side',
      run: (t, ctx) => {
        plain(ctx, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f(ctx, 'peer.pem')]);
        plain(ctx, ['pkey', '-in', f(ctx, 'peer.pem'), '-pubout', '-out', f(ctx, 'peer.pub.pem')]);
        inst(t, ctx, ['pkeyutl', '-derive', ...tool.flags, '-inkey', 'kms:local/web', '-peerkey', f(ctx, 'peer.pub.pem'), '-out', f(ctx, 'z1.bin')]);
        const d = plain(ctx, ['pkeyutl', '-derive', '-inkey', f(ctx, 'peer.pem'), '-peerkey', f(ctx, 'web.pub.pem'), '-out', f(ctx, 'z2.bin')]);
        t.equal(d.status, 0, d.stderr);
        t.same(fs.readFileSync(f(ctx, 'z1.bin')), fs.readFileSync(f(ctx, 'z2.bin')));
      },
    },
    {
      name: 's_server serves one TLS 1.3 handshake to a plain s_client',
      run: async (t, ctx) => {
        if (!fs.existsSync(f(ctx, 'cert.pem')))
          plain(ctx, [
            'req',
            '-x509',
            '-new',
            '-provider-path',
            ctx.modules,
            '-provider',
            'default',
            '-provider',
            'kmsbridge',
            '-key',
            'kms:local/web',
            '-subj',
            '/CN=localhost',
            '-out',
            f(ctx, 'cert.pem'),
          ]);
        const port = await freePort();
        const [exe, argv] = tool.command([
          's_server',
          ...tool.flags,
          '-accept',
          `127.0.0.1:${port}`,
          '-key',
          'kms:local/web',
          '-cert',
          f(ctx, 'cert.pem'),
          '-naccept',
          '1',
          '-tls1_3',
        ]);
        const srv = spawn(exe, argv, { cwd: ctx.dir, env: { ...ctx.env, ...tool.env }, stdio: ['pipe', 'pipe', 'pipe'] });
        let log = '';
        srv.stdout.on('data', (d) => (log += d));
        srv.stderr.on('data', (d) => (log += d));
        const exited = new Promise((r) => srv.once('exit', (code, sig) => r(code ?? sig)));
        const killer = setTimeout(() => srv.kill('SIGKILL'), 240_000);
        for (let i = 0; i < 2400 && !/ACCEPT/.test(log) && srv.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
        const c = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', f(ctx, 'cert.pem'), '-verify_return_error', '-brief'], {
          cwd: ctx.dir,
          env: ctx.env,
          input: 'hello\n',
          encoding: 'utf8',
          timeout: 120_000,
        });
        t.equal(c.status, 0, c.stderr);
        t.match(c.stderr, /Verification: OK/);
        t.match(c.stderr, /Protocol version: TLSv1\.3/);
        srv.stdin.end();
        const code = await exited;
        clearTimeout(killer);
        t.same(tool.findings(log), [], `${tool.name}: no finding in s_server`);
        t.equal(code, 0, `s_server exited 0 after its one connection: ${log.slice(-2000)}`);
      },
    },
    {
      name: 'error paths: unknown key, malformed URI, unsupported digest',
      run: (t, ctx) => {
        let r = inst(t, ctx, ['pkeyutl', '-sign', ...tool.flags, '-inkey', 'kms:local/nope', '-in', f(ctx, 'msg.sha256'), '-out', f(ctx, 'x.sig')], {
          expectFail: true,
        });
        t.match(r.stderr, /key not found/);
        inst(t, ctx, ['pkeyutl', '-sign', ...tool.flags, '-inkey', 'kms:local/', '-in', f(ctx, 'msg.sha256'), '-out', f(ctx, 'x.sig')], { expectFail: true });
        plain(ctx, ['dgst', '-sha1', '-binary', '-out', f(ctx, 'msg.sha1'), f(ctx, 'msg.txt')]);
        r = inst(
          t,
          ctx,
          ['pkeyutl', '-sign', ...tool.flags, '-inkey', 'kms:local/web', '-in', f(ctx, 'msg.sha1'), '-out', f(ctx, 'x.sig'), '-pkeyopt', 'digest:sha1'],
          { expectFail: true },
        );
        t.match(r.stderr, /sha1/i);
      },
    },
    {
      name: 'error path: no agent on the socket',
      run: async (t, ctx) => {
        await ctx.stopAgent();
        const r = inst(t, ctx, ['pkeyutl', '-sign', ...tool.flags, '-inkey', 'kms:local/web', '-in', f(ctx, 'msg.sha256'), '-out', f(ctx, 'x.sig')], {
          expectFail: true,
        });
        t.match(r.stderr, /kmsbridge agent/);
        await ctx.startAgent();
      },
    },
  ];
  return quick ? list.filter((s) => !/Ed25519|ECDH|error path: unknown/.test(s.name)) : list;
}

/**
 * A private agent on a fresh local keyring with the keys the scenarios use
 * (web: ec-p256, rsa: rsa-2048, ed: ed25519), their public halves and
 * key-reference PEMs. Like provider-harness.mjs's setup(), with the patience
 * an instrumented, loaded machine needs. Registers its teardown with |t|.
 */
export async function session(t, { CLI, keyRefPem, extraEnv = {} }) {
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kbsan-'));
  fs.chmodSync(dir, 0o700);
  const keys = path.join(dir, 'keys');
  fs.mkdirSync(keys, { mode: 0o700 });
  fs.mkdirSync(path.join(dir, 'run'), { mode: 0o700 });
  const config = path.join(dir, 'config.toml');
  fs.writeFileSync(config, `[agent]\naudit_log = "${path.join(dir, 'audit.log')}"\n[keyrings.local]\ntype = "local"\npath = "${keys}"\n`);
  const sock = path.join(dir, 'run', 'agent.sock');
  const env = { ...process.env, KMSBRIDGE_AGENT_SOCK: sock, KMSBRIDGE_CONFIG: config, KMSBRIDGE_DEBUG: '', OPENSSL_CONF: '/dev/null', ...extraEnv };
  delete env.NODE_OPTIONS;
  const ctx = { dir, sock, env, config, agent: null, agentLog: '', file: (n) => path.join(dir, n) };
  ctx.startAgent = async (agentEnv = {}) => {
    const a = spawn(process.execPath, [CLI, 'agent', '--foreground'], { env: { ...env, ...agentEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    ctx.agent = a;
    a.stdout.on('data', (d) => (ctx.agentLog += d));
    a.stderr.on('data', (d) => (ctx.agentLog += d));
    for (let i = 0; i < 1200 && a.exitCode === null; i++) {
      if (
        fs.existsSync(sock) &&
        (await new Promise((r) => {
          const s = net.connect(sock, () => (s.destroy(), r(true)));
          s.on('error', () => r(false));
        }))
      )
        return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the agent did not start: ${ctx.agentLog}`);
  };
  ctx.stopAgent = async () => {
    const a = ctx.agent;
    if (!a) return;
    ctx.agent = null;
    if (a.exitCode !== null || a.signalCode !== null) return;
    const done = new Promise((r) => a.once('exit', r));
    a.kill('SIGTERM');
    await done;
  };
  t.teardown(async () => {
    await ctx.stopAgent();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await ctx.startAgent();
  ctx.kb = (...args) => spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 120_000 });
  for (const [name, type] of Object.entries({ web: 'ec-p256', rsa: 'rsa-2048', ed: 'ed25519' })) {
    const r = ctx.kb('keys', 'create', name, '--keyring', 'local', '--type', type);
    if (r.status !== 0) throw new Error(`keys create ${name}: ${r.stderr}`);
    fs.writeFileSync(ctx.file(`${name}.pub.pem`), ctx.kb('keys', 'export', `kms:local/${name}`, '--format', 'pem').stdout);
    fs.writeFileSync(ctx.file(`${name}.ref.pem`), keyRefPem(`kms:local/${name}`));
  }
  fs.writeFileSync(ctx.file('msg.txt'), 'sanitized message\n');
  spawnSync('openssl', ['dgst', '-sha256', '-binary', '-out', ctx.file('msg.sha256'), ctx.file('msg.txt')]);
  return ctx;
}
