// The CLI as a user meets it: every error one clear line with a non-zero exit
// and no stack trace; help on every command; the README's scenarios.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { sandbox, cli, cliOk, startAgent } from './lib/env.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

function oneCleanError(t, r, pattern, what) {
  t.not(r.status, 0, `${what}: non-zero exit`);
  t.match(r.stderr, pattern, `${what}: says what is wrong`);
  t.notMatch(r.stderr, /\n\s+at |Error: |KmsError/, `${what}: no stack trace or class name`);
}

t.test('a new user creates an EC key and reads its fingerprint with ssh-keygen (the README scenario)', async (t) => {
  const box = sandbox(t, { keyrings: {} }); // no keyrings configured: the embedded default
  fs.rmSync(box.config);
  const env = { KMSBRIDGE_CONFIG: '' };
  delete box.env.KMSBRIDGE_CONFIG;
  const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256'], { env }).trim();
  t.equal(uri, 'kms:local/web');
  t.ok(fs.existsSync(`${box.env.XDG_DATA_HOME}/kmsbridge/keys/web.key`), 'stored under $XDG_DATA_HOME/kmsbridge/keys');
  const ssh = cliOk(t, box, ['keys', 'export', 'kms:local/web', '--format', 'openssh'], { env });
  const r = spawnSync('sh', ['-c', 'ssh-keygen -l -f -'], { input: ssh, encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^256 SHA256:\S+ kms:local\/web \(ECDSA\)/);
});

t.test('bad input gets one clear line each', async (t) => {
  const box = sandbox(t);
  cliOk(t, box, ['keys', 'create', 'ec', '--keyring', 'local', '--type', 'ec-p256']);
  oneCleanError(
    t,
    cli(box, ['keys', 'show', 'kms:nokeyring/web']),
    /^kmsbridge: unknown keyring 'nokeyring' \(known in config .*config\.toml: local\)\n$/,
    'unknown keyring',
  );
  oneCleanError(
    t,
    cli(box, ['keys', 'show', 'kms:local/nope']),
    /^kmsbridge: key 'nope' not found in keyring 'local' .*kmsbridge keys list --keyring local\n$/,
    'unknown key',
  );
  oneCleanError(t, cli(box, ['keys', 'show', 'pkcs11:token=x']), /malformed key URI 'pkcs11:token=x': expected kms:<keyring>\/<key-id>/, 'malformed URI');
  oneCleanError(t, cli(box, ['keys', 'show', 'kms:local']), /no key-id after the keyring/, 'URI without key-id');
  oneCleanError(
    t,
    cli(box, ['keys', 'create', 'x', '--keyring', 'local', '--type', 'rsa-1024']),
    /argument 'rsa-1024' is invalid. Allowed choices are rsa-2048, rsa-3072/,
    'unsupported key type',
  );
  oneCleanError(
    t,
    cli(box, ['keys', 'create', '../evil', '--keyring', 'local', '--type', 'ed25519']),
    /key name '..\/evil' is not valid/,
    'path in a key name',
  );
  oneCleanError(t, cli(box, ['keys', 'export', 'kms:local/ec', '--format', 'jwk']), /Allowed choices are pem, der, openssh/, 'unknown export format');
  oneCleanError(
    t,
    cli(box, ['keys', 'create', 'ec', '--keyring', 'local', '--type', 'ec-p256']),
    /key 'ec' already exists in keyring 'local'/,
    'duplicate name',
  );
  oneCleanError(t, cli(box, ['keys', 'list', '--keyring', 'ghost']), /unknown keyring 'ghost'/, 'unknown keyring in list');
  oneCleanError(t, cli(box, ['nonsense']), /unknown command 'nonsense'/, 'unknown command');
});

t.test('operations a key does not allow, SHA-1 and wrong digests are refused by name through the agent', async (t) => {
  const box = sandbox(t, { keyrings: { local: { type: 'local' }, old: { type: 'local', allow_sha1: true } } });
  await startAgent(t, box);
  const rsa = cliOk(t, box, ['keys', 'create', 'rsa', '--keyring', 'local', '--type', 'rsa-2048']).trim();
  const ec = cliOk(t, box, ['keys', 'create', 'ec', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const oldKey = cliOk(t, box, ['keys', 'create', 'ec', '--keyring', 'old', '--type', 'ec-p256']).trim();
  const c = await AgentClient.connect(box.socket);
  t.teardown(() => c.close());
  const sign = (uri, alg, digest, data) =>
    c.request(MsgType.SIGN, [
      { tag: Tag.URI, value: uri },
      { tag: Tag.ALGORITHM, value: alg },
      ...(digest ? [{ tag: Tag.DIGEST, value: digest }] : []),
      { tag: Tag.DATA, value: data },
    ]);
  const sha1 = crypto.createHash('sha1').update('x').digest();
  await t.rejects(sign(ec, 'ecdsa', 'sha1', sha1), {
    codeName: 'UNSUPPORTED',
    message: /SHA-1 signatures are refused for keyring 'local' .*allow_sha1 = true/,
  });
  const sig = (await sign(oldKey, 'ecdsa', 'sha1', sha1)).requireBytes(Tag.RESULT);
  const pub = crypto.createPublicKey(cliOk(t, box, ['keys', 'export', oldKey]));
  t.ok(crypto.verify('sha1', Buffer.from('x'), pub, sig), 'a keyring that allows SHA-1 signs with it');
  await t.rejects(sign(rsa, 'ecdsa', 'sha256', Buffer.alloc(32)), {
    codeName: 'UNSUPPORTED',
    message: /key kms:local\/rsa \(rsa-2048\) does not allow ecdsa; it allows: rsa-pkcs1, rsa-pss, rsa-oaep/,
  });
  await t.rejects(sign(ec, 'ed25519', undefined, Buffer.alloc(10)), { codeName: 'UNSUPPORTED', message: /does not allow ed25519/ });
  await t.rejects(sign(ec, 'ecdsa', 'sha256', Buffer.alloc(20)), { codeName: 'BAD_REQUEST', message: /sha256 digest must be 32 bytes, got 20/ });
  await t.rejects(sign(ec, 'ecdsa', 'md5', Buffer.alloc(16)), { codeName: 'UNSUPPORTED', message: /digest 'md5' is not supported/ });
  await t.rejects(
    c.request(MsgType.DERIVE, [
      { tag: Tag.URI, value: rsa },
      { tag: Tag.PEER_KEY, value: Buffer.alloc(10) },
    ]),
    { codeName: 'UNSUPPORTED', message: /does not allow ecdh/ },
  );
  await t.rejects(
    c.request(MsgType.DECRYPT, [
      { tag: Tag.URI, value: ec },
      { tag: Tag.ALGORITHM, value: 'rsa-oaep' },
      { tag: Tag.DATA, value: Buffer.alloc(32) },
    ]),
    { codeName: 'UNSUPPORTED', message: /does not allow rsa-oaep/ },
  );
  await t.rejects(sign('kms:local/x', 'ecdsa', 'sha256', Buffer.alloc(32)), { codeName: 'NOT_FOUND' });
  t.ok((await sign(ec, 'ecdsa', 'sha256', Buffer.alloc(32))).requireBytes(Tag.RESULT), 'the connection is fine after all of that');
});

t.test('key commands work the same with and without an agent, and the agent sees keys the CLI made directly', async (t) => {
  const box = sandbox(t);
  cliOk(t, box, ['keys', 'create', 'direct', '--keyring', 'local', '--type', 'ec-p256']);
  await startAgent(t, box);
  cliOk(t, box, ['keys', 'create', 'viaagent', '--keyring', 'local', '--type', 'ed25519']);
  const list = cliOk(t, box, ['keys', 'list']);
  t.match(list, /kms:local\/direct\tec P-256/);
  t.match(list, /kms:local\/viaagent\ted25519/);
  cliOk(t, box, ['keys', 'delete', 'kms:local/direct']);
  t.notMatch(cliOk(t, box, ['keys', 'list']), /direct/);
  const audit = fs.readFileSync(box.file('audit.log'), 'utf8');
  t.match(audit, /"op":"create".*"outcome":"ok"/, 'creation through the agent is audited');
  t.match(audit, /"op":"delete","outcome":"ok"/, 'so is deletion');
});

t.test('config errors name the file and the setting', async (t) => {
  const box = sandbox(t);
  fs.writeFileSync(box.config, '[keyrings.local\ntype = "local"\n');
  oneCleanError(t, cli(box, ['keys', 'list']), /^kmsbridge: config .*config\.toml: not valid TOML: /, 'bad TOML');
  fs.writeFileSync(box.config, '[keyrings.k]\ntype = "vault"\n');
  oneCleanError(t, cli(box, ['keys', 'list']), /keyrings\.k\.type 'vault' is not one of local, pkcs11, aws/, 'unknown backend');
  fs.writeFileSync(box.config, '[keyrings.k]\ntimeout_ms = "soon"\n');
  oneCleanError(t, cli(box, ['keys', 'list']), /keyrings\.k\.timeout_ms must be a whole number/, 'bad number');
  fs.writeFileSync(box.config, '[agents]\n');
  oneCleanError(t, cli(box, ['keys', 'list']), /unknown section \[agents\]/, 'unknown section');
  const r = cli(box, ['keys', 'list'], { env: { KMSBRIDGE_CONFIG: box.file('missing.toml') } });
  oneCleanError(t, r, /config file .*missing\.toml does not exist \(set by KMSBRIDGE_CONFIG\)/, 'missing explicit config');
});

t.test('--help works on every command', async (t) => {
  const box = sandbox(t);
  for (const args of [[], ['agent'], ['keys'], ['keys', 'create'], ['keys', 'list'], ['keys', 'show'], ['keys', 'export'], ['keys', 'delete'], ['demo']]) {
    const r = cli(box, [...args, '--help']);
    t.equal(r.status, 0, `${args.join(' ') || 'kmsbridge'} --help`);
    t.match(r.stdout, /^Usage: kmsbridge/);
  }
});

t.test('--debug adds the stack trace that is otherwise hidden', async (t) => {
  const box = sandbox(t);
  const r = cli(box, ['--debug', 'keys', 'show', 'kms:local/nope']);
  t.equal(r.status, 1);
  t.match(r.stderr, /NOT_FOUND\n.*\n\s+at /s);
});

t.test('kmsbridge agent (no --foreground) starts in the background and says where', async (t) => {
  const box = sandbox(t);
  const r = cli(box, ['agent']);
  t.equal(r.status, 0, r.stderr);
  const pid = Number(/pid (\d+)/.exec(r.stdout)[1]);
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {}
  });
  t.match(r.stdout, new RegExp(`socket ${box.socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  t.match(cliOk(t, box, ['keys', 'list']), /^$/);
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100 && fs.existsSync(box.socket); i++) await new Promise((r) => setTimeout(r, 50));
  t.notOk(fs.existsSync(box.socket), 'the agent removed its socket on SIGTERM');
});

t.test('kmsbridge demo runs the main job end to end and cleans up', async (t) => {
  const box = sandbox(t);
  const r = cli(box, ['demo'], { timeout: 120_000 });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /Verified OK[\s\S]*Verified OK/);
  t.match(r.stdout, /demo complete/);
  const dir = /temporary local key store \((.*)\)/.exec(r.stdout)[1];
  t.notOk(fs.existsSync(dir), 'the temporary store is removed');
});
