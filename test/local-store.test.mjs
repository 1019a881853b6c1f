// The local key store at rest: what is on disk, who may read it, and what
// happens when it is tampered with, interrupted, or raced.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { sandbox, cli, cliOk, CLI, opensslOk, openssl } from './lib/env.mjs';

const storeOf = (box) => path.join(box.dir, 'keys-local');

/**
 * Opens a key file the way the format documents it (AES-256-GCM under the
 * store's key file, AAD = the header) — an independent reader, to learn the
 * private key the store must never show in clear.
 */
function unsealWithKekFile(store, name) {
  const kek = fs.readFileSync(path.join(store, 'kek'));
  const kf = JSON.parse(fs.readFileSync(path.join(store, `${name}.key`), 'utf8'));
  const d = crypto.createDecipheriv('aes-256-gcm', kek, Buffer.from(kf.sealed.iv, 'base64'));
  d.setAAD(Buffer.from(JSON.stringify([kf.format, kf.version, kf.name, kf.spec, kf.publicKey])));
  d.setAuthTag(Buffer.from(kf.sealed.tag, 'base64'));
  return Buffer.concat([d.update(Buffer.from(kf.sealed.ciphertext, 'base64')), d.final()]);
}

t.test('no private key byte is in any file of the store, in binary, hex or base64', async (t) => {
  const box = sandbox(t);
  const store = storeOf(box);
  for (const spec of ['rsa-2048', 'ec-p384', 'ed25519']) {
    cliOk(t, box, ['keys', 'create', spec, '--keyring', 'local', '--type', spec]);
    const pkcs8 = unsealWithKekFile(store, spec);
    const priv = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
    // the sealed key is the one whose public half the store publishes
    const pub = crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' });
    t.same(pub, Buffer.from(cliOk(t, box, ['keys', 'export', `kms:local/${spec}`, '--format', 'der'], { binary: true })));
    const jwk = priv.export({ format: 'jwk' });
    const secrets = [pkcs8, ...['d', 'p', 'q'].filter((k) => jwk[k]).map((k) => Buffer.from(jwk[k], 'base64url'))];
    for (const f of fs.readdirSync(store)) {
      const bytes = fs.readFileSync(path.join(store, f));
      for (const s of secrets) {
        const probe = s.subarray(0, Math.min(s.length, 24));
        for (const form of [probe, Buffer.from(probe.toString('hex')), Buffer.from(probe.toString('base64').slice(0, 24))]) {
          if (bytes.includes(form)) t.fail(`${f} contains private key bytes of ${spec}`);
        }
      }
    }
  }
  t.pass('scanned every file for every private component');
});

t.test('the store directory is 0700 and every file in it 0600', async (t) => {
  const box = sandbox(t);
  cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']);
  const store = storeOf(box);
  t.equal(fs.statSync(store).mode & 0o777, 0o700);
  for (const f of fs.readdirSync(store)) t.equal(fs.statSync(path.join(store, f)).mode & 0o777, 0o600, f);
});

t.test('a passphrase store: the right passphrase works, a wrong or missing one is a clear error, and nothing changes', async (t) => {
  const box = sandbox(t);
  const env = { KMSBRIDGE_LOCAL_PASSPHRASE: 'correct horse battery staple' };
  const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256'], { env }).trim();
  t.match(cliOk(t, box, ['keys', 'show', uri], { env }), /protection:\s+passphrase \(scrypt\) from KMSBRIDGE_LOCAL_PASSPHRASE/);
  const before = fs.readdirSync(storeOf(box)).map((f) => fs.readFileSync(path.join(storeOf(box), f), 'utf8'));
  let r = cli(box, ['keys', 'show', uri], { env: { KMSBRIDGE_LOCAL_PASSPHRASE: 'wrong' } });
  t.equal(r.status, 1);
  t.match(r.stderr, /^kmsbridge: wrong passphrase for keyring 'local' \(store .*\): check KMSBRIDGE_LOCAL_PASSPHRASE\n$/);
  r = cli(box, ['keys', 'show', uri]);
  t.match(r.stderr, /keyring 'local' .* is protected by a passphrase: set KMSBRIDGE_LOCAL_PASSPHRASE or passphrase_file/);
  const after = fs.readdirSync(storeOf(box)).map((f) => fs.readFileSync(path.join(storeOf(box), f), 'utf8'));
  t.same(after, before, 'the store is unchanged by failed attempts');
  t.match(cliOk(t, box, ['keys', 'show', uri], { env }), /ec P-256/);
});

t.test('a passphrase_file readable by others is refused; a 0600 one works', async (t) => {
  const box = sandbox(t);
  const pf = box.file('pass');
  fs.writeFileSync(pf, 'from a file\n', { mode: 0o644 });
  fs.chmodSync(pf, 0o644);
  fs.appendFileSync(box.config, `passphrase_file = "${pf}"\n`);
  let r = cli(box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']);
  t.equal(r.status, 1);
  t.match(r.stderr, /passphrase_file .*pass of keyring 'local' is readable by other users; run: chmod 600/);
  fs.chmodSync(pf, 0o600);
  const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']).trim();
  t.match(cliOk(t, box, ['keys', 'show', uri]), /protection:\s+passphrase \(scrypt\) from passphrase_file/);
});

t.test('a tampered key file is reported for that key only; a corrupt one likewise; other keys keep working', async (t) => {
  const box = sandbox(t);
  for (const n of ['a', 'b', 'c']) cliOk(t, box, ['keys', 'create', n, '--keyring', 'local', '--type', 'ec-p256']);
  const store = storeOf(box);
  const fa = path.join(store, 'a.key');
  const kf = JSON.parse(fs.readFileSync(fa, 'utf8'));
  const ct = Buffer.from(kf.sealed.ciphertext, 'base64');
  ct[10] ^= 0x01;
  kf.sealed.ciphertext = ct.toString('base64');
  fs.writeFileSync(fa, JSON.stringify(kf));
  fs.writeFileSync(path.join(store, 'b.key'), '{ this is not json');
  let r = cli(box, ['keys', 'show', 'kms:local/a']);
  t.equal(r.status, 1);
  t.match(r.stderr, /key 'a' in keyring 'local' failed its integrity check: .*a\.key was modified/);
  r = cli(box, ['keys', 'show', 'kms:local/b']);
  t.match(r.stderr, /key file .*b\.key is corrupt .*other keys are unaffected/);
  t.match(cliOk(t, box, ['keys', 'show', 'kms:local/c']), /ec P-256/, 'key c still works');
  // swapping the public key in the header is tampering too (it is authenticated)
  const fc = path.join(store, 'c.key');
  const kc = JSON.parse(fs.readFileSync(fc, 'utf8'));
  kc.publicKey = JSON.parse(fs.readFileSync(path.join(store, 'a.key'), 'utf8')).publicKey;
  fs.writeFileSync(fc, JSON.stringify(kc));
  t.match(cli(box, ['keys', 'export', 'kms:local/c']).stderr, /failed its integrity check/);
});

t.test('killing key creation at any moment never leaves a partial key; leftovers are ignored', async (t) => {
  const box = sandbox(t);
  cliOk(t, box, ['keys', 'create', 'first', '--keyring', 'local', '--type', 'ec-p256']);
  for (let i = 0; i < 12; i++) {
    const child = spawn(process.execPath, [CLI, 'keys', 'create', `k${i}`, '--keyring', 'local', '--type', i % 2 ? 'rsa-2048' : 'ec-p256'], {
      env: box.env,
      stdio: 'ignore',
    });
    // listening from the start: a fast machine finishes the later ones before the kill
    const exited = new Promise((r) => child.once('exit', r));
    await new Promise((r) => setTimeout(r, 60 + i * 25));
    child.kill('SIGKILL');
    await exited;
  }
  // a temporary file as a crash during write leaves it
  fs.writeFileSync(path.join(storeOf(box), '.k99.key.abcdef.tmp'), '{"half": ', { mode: 0o600 });
  const listed = cliOk(t, box, ['keys', 'list', '--keyring', 'local']).trim().split('\n');
  t.ok(listed.some((l) => l.startsWith('kms:local/first')));
  t.notOk(
    listed.some((l) => l.includes('k99')),
    'the temporary file is not a key',
  );
  for (const line of listed) {
    const uri = line.split('\t')[0];
    const r = cli(box, ['keys', 'export', uri]);
    t.equal(r.status, 0, `${uri} is whole and usable`);
  }
  for (const f of fs.readdirSync(storeOf(box)).filter((f) => f.endsWith('.key') && !f.startsWith('.'))) {
    t.doesNotThrow(() => JSON.parse(fs.readFileSync(path.join(storeOf(box), f), 'utf8')), `${f} is complete JSON`);
  }
});

t.test('two concurrent `keys create` of one name: one wins, the other says it exists, the key is sound', async (t) => {
  const box = sandbox(t);
  for (let round = 0; round < 3; round++) {
    const name = `race${round}`;
    const run = () =>
      new Promise((resolve) => {
        const c = spawn(process.execPath, [CLI, 'keys', 'create', name, '--keyring', 'local', '--type', 'ec-p256'], { env: box.env });
        let out = '';
        let err = '';
        c.stdout.on('data', (d) => (out += d));
        c.stderr.on('data', (d) => (err += d));
        c.on('exit', (code) => resolve({ code, out, err }));
      });
    const results = await Promise.all([run(), run()]);
    const winners = results.filter((r) => r.code === 0);
    t.equal(winners.length, 1, `round ${round}: exactly one creator wins`);
    t.match(results.find((r) => r.code !== 0).err, new RegExp(`key '${name}' already exists in keyring 'local'`));
    t.equal(cli(box, ['keys', 'export', `kms:local/${name}`]).status, 0, 'the key is usable');
  }
});

t.test('delete removes the key for good and a second delete says not found', async (t) => {
  const box = sandbox(t);
  const uri = cliOk(t, box, ['keys', 'create', 'gone', '--keyring', 'local', '--type', 'ed25519']).trim();
  cliOk(t, box, ['keys', 'delete', uri]);
  t.notOk(fs.existsSync(path.join(storeOf(box), 'gone.key')));
  const r = cli(box, ['keys', 'delete', uri]);
  t.equal(r.status, 1);
  t.match(r.stderr, /key 'gone' not found in keyring 'local'/);
});
