// The agent's C side under AddressSanitizer + UBSan: the addon (serving
// threads, grants, framing) built again with both into a package directory
// of its own (build/asan/addon-pkg), the agent run from it with libasan
// preloaded into node, and driven by peers that pipeline, split, garble,
// vanish and stop reading, and by peers signing at once with a key on a
// SoftHSM2 token (the threads inside the PKCS#11 module, their sessions, the
// close that waits for them). The agent must answer correctly (signatures
// checked by node:crypto), stop cleanly on SIGTERM and report no finding.
// Leak detection is off: node itself frees little at exit.
import t from 'tap';
import crypto from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ROOT, sandbox, cliOk, canConnect } from './lib/env.mjs';
import { SOFTHSM_LIB, makeToken } from './lib/softhsm.mjs';
import { describe, hello, ping, raw, signFrame } from './lib/agent-raw.mjs';
import { MsgType, Tag } from '../dist/wire/codec.js';

const PKG = path.join(ROOT, 'build', 'asan', 'addon-pkg');
const LIBASAN = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout?.trim();
const SAN_ENV = {
  ASAN_OPTIONS: 'detect_leaks=0:halt_on_error=1:exitcode=86:detect_stack_use_after_return=1',
  UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
};
const findings = (stderr) => stderr.split('\n').filter((l) => /ERROR: AddressSanitizer|runtime error:|SUMMARY: \w+Sanitizer/.test(l));

/** A package directory with dist/ and an instrumented build/Release/kmsbridge.node. */
function buildInstrumentedAddon() {
  fs.rmSync(PKG, { recursive: true, force: true });
  fs.mkdirSync(PKG, { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'binding.gyp'), path.join(PKG, 'binding.gyp'));
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(PKG, 'package.json'));
  fs.symlinkSync(path.join(ROOT, 'src-native'), path.join(PKG, 'src-native'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(PKG, 'node_modules'));
  fs.cpSync(path.join(ROOT, 'dist'), path.join(PKG, 'dist'), { recursive: true });
  // The node-gyp and headers scripts/build-native.mjs uses.
  const gyp =
    process.env.npm_config_node_gyp ??
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  const nodedir = process.env.npm_config_nodedir ?? (fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : undefined);
  const flags = '-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1';
  return spawnSync(process.execPath, [gyp, 'rebuild', '--directory', PKG, ...(nodedir ? [`--nodedir=${nodedir}`] : [])], {
    env: { ...process.env, CFLAGS: flags, LDFLAGS: '-fsanitize=address,undefined' },
    encoding: 'utf8',
    timeout: 600_000,
  });
}

const build = fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js')) ? buildInstrumentedAddon() : null;
if (!build) {
  t.fail('dist/ is not built (npm run build)');
} else if (build.status !== 0) {
  t.fail(`the instrumented addon did not build:\n${(build.stdout + build.stderr).slice(-4000)}`);
} else {
  t.test('the agent under ASan+UBSan serves every kind of peer, stops cleanly and reports nothing', async (t) => {
    const token = makeToken(t, { label: 'kmsbridge-asan' });
    const box = sandbox(t, {
      keyrings: {
        local: { type: 'local' },
        hsm: { type: 'pkcs11', library: SOFTHSM_LIB, token_label: token.label, pin_env: 'KMSBRIDGE_TEST_HSM_PIN', max_sessions: 8 },
      },
    });
    box.env = { ...box.env, ...token.env, KMSBRIDGE_TEST_HSM_PIN: token.pin };
    const agent = spawn(process.execPath, [path.join(PKG, 'dist', 'cli', 'main.js'), 'agent', '--foreground'], {
      env: { ...box.env, ...SAN_ENV, LD_PRELOAD: fs.realpathSync(LIBASAN) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    agent.stderr.on('data', (d) => (log += d));
    const exited = new Promise((r) => agent.once('exit', (code, signal) => r({ code, signal })));
    t.teardown(() => agent.exitCode === null && agent.kill('SIGKILL'));
    const deadline = Date.now() + 60_000;
    while (!(await canConnect(box.socket))) {
      if (agent.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not listen: ${log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // A finding stops the agent at once: say what it was, not only that a peer was refused.
    let c, after;
    try {
      const ec = cliOk(t, box, ['keys', 'create', 'ec', '--keyring', 'local', '--type', 'ec-p256']).trim();
      const ecPub = cliOk(t, box, ['keys', 'export', ec]);

      // Pipelined: the first signature goes through the KeyService, the rest are granted.
      c = await raw(box.socket);
      c.s.write(Buffer.concat([hello(1), signFrame(2, ec, 'first')]));
      await c.until(2, 60_000);
      await new Promise((r) => setTimeout(r, 200));
      const frames = [];
      for (let id = 3; id < 603; id++) frames.push(id % 3 === 0 ? ping(id) : id % 3 === 1 ? signFrame(id, ec, `m${id}`) : describe(id, ec));
      c.s.write(Buffer.concat(frames));
      const replies = await c.until(602, 120_000);
      const signed = [...replies.values()].filter((f) => f.type === (MsgType.SIGN | 0x8000));
      t.equal(signed.length, 201, 'every signature answered');
      t.ok(
        signed.every((f) => crypto.verify('sha256', Buffer.from(f.id === 2 ? 'first' : `m${f.id}`), ecPub, f.fields.find((x) => x.tag === Tag.RESULT).value)),
        'and every one verifies',
      );

      // Four peers at once, so that several serving threads sign with one
      // grant: on the contexts a local key's grant keeps, and inside the
      // PKCS#11 module with sessions of their own.
      const fourPeers = async (key, pub, name) => {
        const peers = await Promise.all([0, 1, 2, 3].map(() => raw(box.socket)));
        for (const p of peers) p.s.write(Buffer.concat([hello(1), signFrame(2, key, 'first')]));
        await Promise.all(peers.map((p) => p.until(2, 60_000)));
        await new Promise((r) => setTimeout(r, 200));
        peers.forEach((p, i) => p.s.write(Buffer.concat(Array.from({ length: 100 }, (_, k) => signFrame(k + 3, key, `${name}${i}-${k + 3}`)))));
        const replies = await Promise.all(peers.map((p) => p.until(102, 120_000)));
        for (const p of peers) p.s.destroy();
        return replies.every((r, i) =>
          [...r.values()]
            .filter((f) => f.id > 2)
            .every((f) => crypto.verify('sha256', Buffer.from(`${name}${i}-${f.id}`), pub, f.fields.find((x) => x.tag === Tag.RESULT).value)),
        );
      };
      t.ok(await fourPeers(ec, ecPub, 'l'), "four peers signing with a local key's grant at once: 400 signatures verify");
      const hsm = cliOk(t, box, ['keys', 'create', 'hsm-ec', '--keyring', 'hsm', '--type', 'ec-p256']).trim();
      const hsmPub = cliOk(t, box, ['keys', 'export', hsm]);
      t.ok(await fourPeers(hsm, hsmPub, 'h'), 'four peers signing on the token at once: 400 signatures verify');

      // One byte at a time.
      const slow = await raw(box.socket);
      for (const b of Buffer.concat([hello(1), signFrame(2, ec, 'slow'), ping(3)])) {
        slow.s.write(Buffer.from([b]));
        await new Promise((r) => setImmediate(r));
      }
      t.ok(crypto.verify('sha256', Buffer.from('slow'), ecPub, (await slow.until(3, 60_000)).get(2).fields[0].value), 'one byte at a time');

      // Garbage, an oversized length, a vanishing peer mid-frame, a peer that never reads.
      for (const bytes of [
        Buffer.from('GET / HTTP/1.1\r\n\r\n'),
        Buffer.from([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1]),
        Buffer.concat([hello(1), signFrame(2, ec, 'x').subarray(0, 30)]),
      ]) {
        const s = net.connect(box.socket, () => s.end(bytes));
        s.on('error', () => {});
        s.resume();
        await new Promise((r) => s.once('close', r));
      }
      const greedy = await raw(box.socket);
      greedy.s.pause();
      const many = [hello(1)];
      for (let id = 2; id < 20_002; id++) many.push(signFrame(id, ec, `g${id}`));
      greedy.s.write(Buffer.concat(many));
      await new Promise((r) => setTimeout(r, 2000));
      after = await raw(box.socket);
      after.s.write(Buffer.concat([hello(1), ping(2)]));
      t.equal((await after.until(2, 60_000)).get(2).type, MsgType.PING | 0x8000, 'another peer is answered while one does not read');
      greedy.s.destroy();
      slow.s.destroy();
    } catch (err) {
      t.same(findings(log), [], 'no sanitizer finding');
      t.fail(`${err.message}\n${log.slice(-3000)}`);
      return;
    }
    agent.kill('SIGTERM'); // c and after are still open
    const { code } = await exited;
    t.equal(code, 0, 'the agent stopped on SIGTERM with connections open');
    t.same(findings(log), [], 'no sanitizer finding');
    c.s.destroy();
    after.s.destroy();
  });
}
