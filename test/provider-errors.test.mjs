// Failure paths: each is a clear error and a non-zero exit, never a crash or
// a hang; and the provider recovers when the agent comes back.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { CLI, FLAGS, MODULES, ROOT, missing, openssl, setup } from './provider-harness.mjs';

const STRESS = path.join(ROOT, 'build', 'native-tests', 'provider_stress');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const canConnect = (sock) =>
  new Promise((resolve) => {
    const s = net.connect(sock, () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
async function waitListening(sock, ms = 15000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await canConnect(sock)) return true;
    await sleep(50);
  }
  return false;
}

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  const ctx = await setup(t);
  const f = ctx.file;
  fs.writeFileSync(f('msg.txt'), 'x');
  openssl(ctx, ['dgst', '-sha256', '-binary', '-out', f('msg.sha256'), f('msg.txt')]);
  const sign = (key, extra = [], env = ctx.env) =>
    openssl(ctx, ['pkeyutl', '-sign', ...FLAGS, '-inkey', key, '-in', f('msg.sha256'), '-out', f('out.sig'), ...extra], { env, timeout: 20000 });

  t.test('an unknown key names the URI', async (t) => {
    const r = sign('kms:local/nope');
    t.not(r.status, 0);
    t.match(r.stderr, /kmsbridge:.*key not found.*kms:local\/nope/);
  });

  t.test('a malformed URI is refused before any request', async (t) => {
    const r = sign('kms:local/');
    t.not(r.status, 0);
  });

  t.test('SHA-1 is refused for a key whose keyring does not allow it', async (t) => {
    openssl(ctx, ['dgst', '-sha1', '-binary', '-out', f('msg.sha1'), f('msg.txt')]);
    const r = openssl(ctx, ['pkeyutl', '-sign', ...FLAGS, '-inkey', 'kms:local/web', '-in', f('msg.sha1'), '-out', f('sha1.sig'), '-pkeyopt', 'digest:sha1']);
    t.not(r.status, 0);
    t.match(r.stderr, /kmsbridge:.*sha1/i);
  });

  t.test('the private key cannot be exported: text dumps and traditional PEM are refused, -out writes only the reference', async (t) => {
    const text = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web', '-text', '-noout']);
    t.not(text.status, 0);
    t.match(text.stderr, /private key export refused.*stays in the key manager/);
    const trad = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/rsa', '-traditional']);
    t.not(trad.status, 0);
    t.match(trad.stderr, /private key export refused/);
    t.notMatch(trad.stdout, /BEGIN/);
    const ref = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web']);
    t.equal(ref.status, 0, ref.stderr);
    t.match(ref.stdout, /^kmsbridge key reference: kms:local\/web\n[^]*-----BEGIN KMSBRIDGE KEY URI-----/);
    t.notMatch(ref.stdout, /PRIVATE KEY/);
    const pub = openssl(ctx, ['pkey', ...FLAGS, '-in', 'kms:local/web', '-pubout']);
    t.equal(pub.status, 0, pub.stderr);
    t.equal(pub.stdout, fs.readFileSync(f('web.pub.pem'), 'utf8'));
  });

  t.test('with kmsbridge loaded before default, signing still works', async (t) => {
    const r = openssl(ctx, [
      'pkeyutl',
      '-sign',
      '-provider-path',
      MODULES,
      '-provider',
      'kmsbridge',
      '-provider',
      'default',
      '-inkey',
      'kms:local/rsa',
      '-in',
      f('msg.sha256'),
      '-out',
      f('rsa.sig'),
      '-pkeyopt',
      'digest:sha256',
    ]);
    t.equal(r.status, 0, r.stderr);
    const v = openssl(ctx, [
      'pkeyutl',
      '-verify',
      '-pubin',
      '-inkey',
      f('rsa.pub.pem'),
      '-in',
      f('msg.sha256'),
      '-sigfile',
      f('rsa.sig'),
      '-pkeyopt',
      'digest:sha256',
    ]);
    t.equal(v.status, 0, v.stdout + v.stderr);
  });

  t.test('no agent: a clear error naming the socket and `kmsbridge agent`; then recovery', async (t) => {
    await ctx.stopAgent();
    const started = Date.now();
    const r = sign('kms:local/web');
    t.not(r.status, 0);
    t.ok(Date.now() - started < 10000, 'fails fast');
    t.match(r.stderr, /agent not running/);
    t.match(r.stderr, ctx.sock);
    t.match(r.stderr, /kmsbridge agent/);
    await ctx.startAgent();
    const again = sign('kms:local/web');
    t.equal(again.status, 0, `works once the agent is back: ${again.stderr}`);
  });

  t.test('KMSBRIDGE_AGENT_SOCK overrides the openssl.cnf socket', async (t) => {
    const env = { ...ctx.env, OPENSSL_CONF: ctx.conf, KMSBRIDGE_AGENT_SOCK: f('elsewhere.sock') };
    const r = openssl(ctx, ['pkeyutl', '-sign', '-inkey', 'kms:local/web', '-in', f('msg.sha256'), '-out', f('x.sig')], { env });
    t.not(r.status, 0);
    t.match(r.stderr, /elsewhere\.sock/);
  });

  t.test(
    'the agent killed mid-run, then stopped, then back: each call fails clearly within its timeout, signing recovers in-process, the next command works',
    { skip: fs.existsSync(STRESS) ? false : `${STRESS} is not built (make -C src-native tests)` },
    async (t) => {
      // One process signs back to back (C harness, OSSL_STORE + EVP_DigestSign)
      // while the agent is SIGKILLed and restarted, then SIGSTOPped and resumed.
      const TIMEOUT_MS = 1500;
      const outdir = f('series');
      fs.mkdirSync(outdir, { recursive: true });
      const child = spawn(STRESS, ['series', MODULES, outdir, 'kms:local/rsa', '14'], {
        env: { ...ctx.env, KMSBRIDGE_TIMEOUT_MS: String(TIMEOUT_MS) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
      const killTimer = setTimeout(() => child.kill('SIGKILL'), 60000); // a hang is a failure, not a stuck run
      const signedSoFar = () => Number([...out.matchAll(/progress signed=(\d+)/g)].pop()?.[1] ?? 0);
      let stopped = null;
      try {
        for (let i = 0; i < 100 && signedSoFar() < 50; i++) await sleep(50);
        t.ok(signedSoFar() >= 50, `signing before the fault: ${out.slice(-500)}`);

        // SIGKILL: no goodbye, the socket file stays behind.
        const agent = ctx.agent;
        ctx.agent = null;
        const gone = new Promise((r) => agent.once('exit', r));
        agent.kill('SIGKILL');
        await gone;
        await sleep(800);
        await ctx.startAgent();
        t.ok(await waitListening(ctx.sock), 'the agent is back');
        const before = signedSoFar();
        for (let i = 0; i < 100 && signedSoFar() <= before + 20; i++) await sleep(50);

        // SIGSTOP: the agent accepts connections but answers nothing.
        stopped = ctx.agent.pid;
        process.kill(stopped, 'SIGSTOP');
        await sleep(2 * TIMEOUT_MS + 500);
        process.kill(stopped, 'SIGCONT');
        stopped = null;
      } finally {
        if (stopped !== null) process.kill(stopped, 'SIGCONT');
      }
      const { code, signal } = await exited;
      clearTimeout(killTimer);

      const summary = /summary mode=series signed=(\d+) failed=(\d+) max_fail_ms=(\d+) ok_after_last_failure=(\d+)/.exec(out);
      t.ok(summary, `the harness finished normally (exit ${code}, signal ${signal}): ${out.slice(-2000)}`);
      t.equal(signal, null, 'no crash');
      t.equal(code, 0, 'signing recovered after every fault');
      if (summary) {
        const [, , failed, maxFail, okAfter] = summary.map(Number);
        t.ok(failed > 0, `calls failed while the agent was gone (${failed})`);
        // The connect+HELLO timeout (5 s by default) bounds a call to a stopped agent.
        t.ok(maxFail < 5000 + 1500, `each failure came back within its timeout (slowest: ${maxFail} ms)`);
        t.ok(okAfter > 10, `signed again afterwards (${okAfter})`);
      }
      const fails = out.split('\n').filter((l) => l.startsWith('fail '));
      const clear = new RegExp(
        `kmsbridge: (the connection to the kmsbridge agent at ${ctx.sock} broke|cannot reach the kmsbridge agent at ${ctx.sock}|the kmsbridge agent at ${ctx.sock} did not answer within \\d+ ms|connecting to the kmsbridge agent at ${ctx.sock} timed out)`,
      );
      t.ok(fails.length > 0 && fails.every((l) => clear.test(l)), `every failure says what happened and names the socket:\n${fails.slice(0, 5).join('\n')}`);
      t.ok(
        fails.some((l) => /cannot reach the kmsbridge agent .*kmsbridge agent`/.test(l)),
        'while the agent is dead: how to start it',
      );
      t.ok(
        fails.some((l) => new RegExp(`did not answer within ${TIMEOUT_MS} ms|did not answer within 5000 ms`).test(l)),
        'while it is stopped: the timeout',
      );

      // The harness's signatures check out with plain openssl too.
      const v = openssl(ctx, ['dgst', '-sha256', '-verify', f('rsa.pub.pem'), '-signature', path.join(outdir, 'series.sig'), path.join(outdir, 'series.msg')]);
      t.equal(v.status, 0, `openssl verifies a harness signature: ${v.stdout}${v.stderr}`);
      // And a new command works at once.
      const again = sign('kms:local/web');
      t.equal(again.status, 0, again.stderr);
      const ver = openssl(ctx, ['pkeyutl', '-verify', '-pubin', '-inkey', f('web.pub.pem'), '-in', f('msg.sha256'), '-sigfile', f('out.sig')]);
      t.equal(ver.status, 0, ver.stdout + ver.stderr);
    },
  );

  t.test('a wrong keystore passphrase: openssl names the passphrase, exits non-zero, and works once the agent has the right one', async (t) => {
    // A passphrase-protected local keyring served by an agent of its own.
    const dir = f('sealed');
    fs.mkdirSync(path.join(dir, 'run'), { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(dir, 'config.toml'), `[keyrings.sealed]\ntype = "local"\npath = "${path.join(dir, 'keys')}"\n`);
    const sock = path.join(dir, 'run', 'agent.sock');
    const env = { ...ctx.env, KMSBRIDGE_CONFIG: path.join(dir, 'config.toml'), KMSBRIDGE_AGENT_SOCK: sock };
    const right = { ...env, KMSBRIDGE_LOCAL_PASSPHRASE: 'correct horse battery staple' };
    const kb = (args, e) => spawnSync(process.execPath, [CLI, ...args], { env: e, encoding: 'utf8', timeout: 60000 });
    let r = kb(['keys', 'create', 'k', '--keyring', 'sealed', '--type', 'ec-p256'], right);
    t.equal(r.status, 0, r.stderr);
    r = kb(['keys', 'export', 'kms:sealed/k', '--format', 'pem', '-o', path.join(dir, 'k.pub.pem')], right);
    t.equal(r.status, 0, r.stderr);

    const agents = [];
    t.teardown(async () => {
      for (const a of agents) {
        if (a.exitCode === null && a.signalCode === null) {
          const done = new Promise((res) => a.once('exit', res));
          a.kill('SIGKILL');
          await done;
        }
      }
    });
    const startAgent = async (e) => {
      const a = spawn(process.execPath, [CLI, 'agent', '--foreground'], { env: e, stdio: ['ignore', 'ignore', 'pipe'] });
      let log = '';
      a.stderr.on('data', (d) => (log += d));
      agents.push(a);
      t.ok(await waitListening(sock), `the agent listens: ${log}`);
      return { a, log: () => log };
    };
    const stop = async (a) => {
      const done = new Promise((res) => a.once('exit', res));
      a.kill('SIGTERM');
      await done;
    };
    const signSealed = () =>
      openssl(ctx, ['pkeyutl', '-sign', ...FLAGS, '-inkey', 'kms:sealed/k', '-in', f('msg.sha256'), '-out', path.join(dir, 'k.sig')], { env, timeout: 30000 });

    const wrong = await startAgent({ ...env, KMSBRIDGE_LOCAL_PASSPHRASE: 'wrong horse' });
    t.match(wrong.log(), /keyring 'sealed' is unusable until this is fixed: wrong passphrase/, 'the agent says so at start');
    const started = Date.now();
    const bad = signSealed();
    t.equal(bad.signal, null, 'no crash, no hang');
    t.not(bad.status, 0, 'non-zero exit');
    t.ok(Date.now() - started < 20000, 'fails in bounded time');
    t.match(bad.stderr, /kmsbridge:.*key unusable.*wrong passphrase for keyring 'sealed'.*KMSBRIDGE_LOCAL_PASSPHRASE/);
    t.notOk(fs.existsSync(path.join(dir, 'k.sig')) && fs.statSync(path.join(dir, 'k.sig')).size > 0, 'no signature written');
    await stop(wrong.a);

    const good = await startAgent(right);
    const ok = signSealed();
    t.equal(ok.status, 0, `with the right passphrase: ${ok.stderr}`);
    const v = openssl(ctx, [
      'pkeyutl',
      '-verify',
      '-pubin',
      '-inkey',
      path.join(dir, 'k.pub.pem'),
      '-in',
      f('msg.sha256'),
      '-sigfile',
      path.join(dir, 'k.sig'),
    ]);
    t.equal(v.status, 0, v.stdout + v.stderr);
    await stop(good.a);
  });
}
