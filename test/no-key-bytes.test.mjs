// No private key byte leaves the KeyService: keys are made, every operation
// is run (successful and failing) through the provider, the CLI and the raw
// agent protocol with KMSBRIDGE_DEBUG logging on in the agent and in the
// provider, and every output is captured — stdout/stderr of the agent, of
// openssl and of the CLI, the audit log, the debug log, the files openssl
// wrote, and every reply frame — then scanned for the private keys' bytes in
// raw, hex and base64 form. The keys are learnt independently by unsealing
// the store's key files with its kek file, as local-store.test.mjs does.
import t from 'tap';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { sandbox, cli, startAgent } from './lib/env.mjs';
import { MODULES, keyRefPem, missing } from './provider-harness.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag, encodeFrame } from '../dist/wire/codec.js';

function unsealWithKekFile(store, name) {
  const kek = fs.readFileSync(path.join(store, 'kek'));
  const kf = JSON.parse(fs.readFileSync(path.join(store, `${name}.key`), 'utf8'));
  const d = crypto.createDecipheriv('aes-256-gcm', kek, Buffer.from(kf.sealed.iv, 'base64'));
  d.setAAD(Buffer.from(JSON.stringify([kf.format, kf.version, kf.name, kf.spec, kf.publicKey])));
  d.setAuthTag(Buffer.from(kf.sealed.tag, 'base64'));
  return Buffer.concat([d.update(Buffer.from(kf.sealed.ciphertext, 'base64')), d.final()]);
}

/** The forms a secret could take in text or binary output. */
function forms(secret) {
  const probe = secret.subarray(0, Math.min(secret.length, 20));
  const out = [probe, Buffer.from(probe.toString('hex')), Buffer.from(probe.toString('hex').toUpperCase())];
  for (let shift = 0; shift < 3; shift++) {
    // base64 of the secret at each alignment inside a larger blob: the middle characters
    const b64 = Buffer.concat([Buffer.alloc(shift), probe]).toString('base64');
    const mid = b64.slice(4, 4 + 16);
    out.push(Buffer.from(mid), Buffer.from(mid.replace(/\+/g, '-').replace(/\//g, '_')));
  }
  return out;
}

const why = missing();
if (why) {
  t.plan(0, why);
} else {
  t.test('no private key byte in any reply, log, audit line, error or output file, with debug logging on everywhere', async (t) => {
    const box = sandbox(t);
    const debugLog = box.file('provider-debug.log');
    const agent = await startAgent(t, box, { env: { KMSBRIDGE_DEBUG: '1' } });
    const outputs = []; // [label, Buffer]
    const keep = (label, b) => outputs.push([label, Buffer.isBuffer(b) ? b : Buffer.from(String(b ?? ''))]);
    const KEYS = { rsa: 'rsa-2048', web: 'ec-p256', ed: 'ed25519' };
    const kb = (args, opts) => {
      const r = cli(box, args, { ...opts, env: { KMSBRIDGE_DEBUG: '1' } });
      keep(`kmsbridge ${args.join(' ')} stdout`, r.stdout);
      keep(`kmsbridge ${args.join(' ')} stderr`, r.stderr);
      return r;
    };
    for (const [name, spec] of Object.entries(KEYS)) {
      t.equal(kb(['keys', 'create', name, '--keyring', 'local', '--type', spec]).status, 0);
      for (const format of ['pem', 'der', 'openssh'])
        if (name !== 'rsa' || format !== 'openssh') kb(['keys', 'export', `kms:local/${name}`, '--format', format], { binary: format === 'der' });
      kb(['keys', 'show', `kms:local/${name}`]);
      fs.writeFileSync(box.file(`${name}.pub.pem`), cli(box, ['keys', 'export', `kms:local/${name}`]).stdout);
      fs.writeFileSync(box.file(`${name}.ref.pem`), keyRefPem(`kms:local/${name}`));
    }
    kb(['keys', 'list']);
    kb(['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']); // exists
    kb(['keys', 'show', 'kms:local/none']);

    // ---- openssl with the provider, debug log on ----
    const env = { ...box.env, KMSBRIDGE_DEBUG: debugLog, OPENSSL_CONF: '/dev/null' };
    const P = ['-provider-path', MODULES, '-provider', 'default', '-provider', 'kmsbridge'];
    const f = box.file;
    fs.writeFileSync(f('msg.txt'), 'scan me\n');
    spawnSync('openssl', ['dgst', '-sha256', '-binary', '-out', f('msg.sha256'), f('msg.txt')]);
    spawnSync('openssl', ['dgst', '-sha1', '-binary', '-out', f('msg.sha1'), f('msg.txt')]);
    spawnSync('openssl', [
      'pkeyutl',
      '-encrypt',
      '-pubin',
      '-inkey',
      f('rsa.pub.pem'),
      '-in',
      f('msg.txt'),
      '-out',
      f('ct.bin'),
      '-pkeyopt',
      'rsa_padding_mode:oaep',
    ]);
    spawnSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f('peer.pem')]);
    spawnSync('openssl', ['pkey', '-in', f('peer.pem'), '-pubout', '-out', f('peer.pub.pem')]);
    let ran = 0;
    let failed = 0;
    const ossl = (args, outFile) => {
      const r = spawnSync('openssl', args, { cwd: box.dir, env, timeout: 60_000 });
      ran++;
      if (r.status !== 0) failed++;
      keep(`openssl ${args.join(' ')} stdout`, r.stdout);
      keep(`openssl ${args.join(' ')} stderr`, r.stderr);
      if (outFile && fs.existsSync(outFile)) keep(`file ${outFile}`, fs.readFileSync(outFile));
      return r;
    };
    for (const [name, key] of [
      ['web', 'kms:local/web'],
      ['rsa', f('rsa.ref.pem')],
    ]) {
      ossl(['pkeyutl', '-sign', ...P, '-inkey', key, '-in', f('msg.sha256'), '-out', f(`${name}.sig`)], f(`${name}.sig`));
      ossl(['req', '-x509', '-new', ...P, '-key', key, '-subj', '/CN=x', '-out', f(`${name}.crt`)], f(`${name}.crt`));
      ossl(['pkey', ...P, '-in', key, '-text', '-noout']); // refused
      ossl(['pkey', ...P, '-in', key, '-traditional']); // refused
      ossl(['pkey', ...P, '-in', key, '-out', f(`${name}.out.pem`)], f(`${name}.out.pem`)); // writes the reference only
      ossl(['pkey', ...P, '-in', key, '-outform', 'DER', '-out', f(`${name}.out.der`)], f(`${name}.out.der`));
      ossl(['pkcs8', '-topk8', '-nocrypt', ...P, '-in', key, '-out', f(`${name}.p8`)], f(`${name}.p8`));
      ossl(['pkeyutl', '-sign', ...P, '-inkey', key, '-in', f('msg.sha1'), '-pkeyopt', 'digest:sha1', '-out', f('sha1.sig')]); // refused
    }
    ossl(['pkeyutl', '-sign', ...P, '-rawin', '-inkey', 'kms:local/ed', '-in', f('msg.txt'), '-out', f('ed.sig')], f('ed.sig'));
    ossl(['pkeyutl', '-decrypt', ...P, '-inkey', 'kms:local/rsa', '-in', f('ct.bin'), '-pkeyopt', 'rsa_padding_mode:oaep', '-out', f('pt.txt')], f('pt.txt'));
    ossl(['pkeyutl', '-decrypt', ...P, '-inkey', 'kms:local/rsa', '-in', f('ct.bin'), '-out', f('pt1.txt')]); // PKCS#1 v1.5: refused
    ossl(['pkeyutl', '-derive', ...P, '-inkey', 'kms:local/web', '-peerkey', f('peer.pub.pem'), '-out', f('z.bin')], f('z.bin'));
    ossl(['pkeyutl', '-sign', ...P, '-inkey', 'kms:local/nope', '-in', f('msg.sha256')]);
    ossl(['rand', ...P, '-propquery', 'provider=kmsbridge', '-hex', '16']);
    t.ok(ran >= 20 && failed >= 6, `${ran} openssl runs, ${failed} of them failing as they should`);
    t.equal(fs.readFileSync(f('pt.txt'), 'utf8'), 'scan me\n', 'the operations really ran (OAEP decrypt round trip)');

    // ---- the raw protocol: every reply frame, successful and failing ----
    const c = await AgentClient.connect(box.socket);
    const ask = async (type, fields) => {
      try {
        keep(`reply to ${MsgType[type]}`, encodeFrame(await c.request(type, fields)));
      } catch (e) {
        keep(`error reply to ${MsgType[type]}`, `${e.codeName} ${e.message}`);
      }
    };
    for (const name of Object.keys(KEYS)) await ask(MsgType.DESCRIBE, [{ tag: Tag.URI, value: `kms:local/${name}` }]);
    await ask(MsgType.LIST, []);
    await ask(MsgType.SIGN, [
      { tag: Tag.URI, value: 'kms:local/web' },
      { tag: Tag.ALGORITHM, value: 'ecdsa' },
      { tag: Tag.DIGEST, value: 'sha256' },
      { tag: Tag.DATA, value: Buffer.alloc(32, 7) },
    ]);
    await ask(MsgType.SIGN, [
      { tag: Tag.URI, value: 'kms:local/rsa' },
      { tag: Tag.ALGORITHM, value: 'rsa-pkcs1' },
      { tag: Tag.DATA, value: Buffer.alloc(300, 7) },
    ]);
    await ask(MsgType.SIGN, [
      { tag: Tag.URI, value: 'kms:local/rsa' },
      { tag: Tag.ALGORITHM, value: 'rsa-pss' },
      { tag: Tag.DIGEST, value: 'sha256' },
      { tag: Tag.SALT_LENGTH, value: 9999 },
      { tag: Tag.DATA, value: Buffer.alloc(32, 7) },
    ]);
    await ask(MsgType.DECRYPT, [
      { tag: Tag.URI, value: 'kms:local/rsa' },
      { tag: Tag.ALGORITHM, value: 'rsa-oaep' },
      { tag: Tag.DATA, value: Buffer.alloc(256, 1) },
    ]);
    await ask(MsgType.DERIVE, [
      { tag: Tag.URI, value: 'kms:local/web' },
      { tag: Tag.PEER_KEY, value: Buffer.from('junk') },
    ]);
    await ask(MsgType.SIGN, [
      { tag: Tag.URI, value: 'kms:local/ed' },
      { tag: Tag.ALGORITHM, value: 'ecdsa' },
      { tag: Tag.DATA, value: Buffer.alloc(32) },
    ]);
    await ask(MsgType.RANDOM, [{ tag: Tag.LENGTH, value: 64 }]);
    c.close();

    await new Promise((r) => setTimeout(r, 200));
    keep('audit log', fs.existsSync(box.file('audit.log')) ? fs.readFileSync(box.file('audit.log')) : '');
    keep('provider debug log', fs.existsSync(debugLog) ? fs.readFileSync(debugLog) : '');
    keep('agent stderr', agent.log());
    t.match(fs.readFileSync(debugLog, 'utf8'), /provider -> SIGN/, 'the provider debug log was on and is part of the scan');
    t.ok(fs.readFileSync(box.file('audit.log'), 'utf8').split('\n').length > 20, 'the audit log has the operations');

    // ---- the secrets, learnt independently, and the scan ----
    const store = path.join(box.dir, 'keys-local');
    let secrets = 0;
    let bytes = 0;
    for (const [label, b] of outputs) bytes += b.length;
    for (const name of Object.keys(KEYS)) {
      const pkcs8 = unsealWithKekFile(store, name);
      const jwk = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
      // the private components only (an EC PKCS#8 also holds the public point, which is public)
      const parts = [...['d', 'p', 'q', 'dp', 'dq', 'qi'].filter((k) => jwk[k]).map((k) => [k, Buffer.from(jwk[k], 'base64url')])];
      for (const [what, s] of parts) {
        secrets++;
        for (const form of forms(s))
          for (const [label, b] of outputs) if (b.includes(form)) t.fail(`${label} contains ${what} of ${name} (${form.toString('latin1').slice(0, 20)}…)`);
      }
    }
    // the scan can see: a secret planted in each form inside other text is found
    const planted = crypto.randomBytes(32);
    for (const enc of ['hex', 'base64', 'base64url']) {
      for (const pad of ['', 'a', 'ab']) {
        const blob = Buffer.from(`x${Buffer.concat([Buffer.from(pad), planted]).toString(enc)}y`);
        t.ok(
          forms(planted).some((fm) => blob.includes(fm)),
          `a planted secret in ${enc} (offset ${pad.length}) is found`,
        );
      }
    }
    t.ok(
      forms(planted).some((fm) => Buffer.concat([Buffer.from('raw'), planted]).includes(fm)),
      'a planted raw secret is found',
    );
    t.pass(`scanned ${outputs.length} outputs (${bytes} bytes) for ${secrets} private components in ${forms(Buffer.alloc(20)).length} forms each`);
  });
}
