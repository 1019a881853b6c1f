// The same scenarios on every backend (see test/lib/backends.mjs): keys of
// every type the backend has, used through the agent, each result verified by
// the system openssl with the public key an independent tool read.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { sandbox, startAgent, openssl, opensslOk, ROOT } from './lib/env.mjs';
import { selectedFixtures } from './lib/backends.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

const DIGEST_LEN = { sha256: 32, sha384: 48, sha512: 64 };
const defaultDigest = (spec) => ({ 'ec-p384': 'sha384', 'ec-p521': 'sha512' })[spec] ?? 'sha256';

const PROVIDER = ['-provider-path', path.join(ROOT, 'build', 'ossl-modules'), '-provider', 'default', '-provider', 'kmsbridge'];

/** The provider door: `openssl pkeyutl -sign -inkey kms:…`, verified by plain openssl with the independent public key. */
async function providerDoor(t, box, uri, pub, v) {
  const message = fs.readFileSync(box.file('msg'));
  const input = v.digest ? crypto.createHash(v.digest).update(message).digest() : message;
  fs.writeFileSync(box.file('door-in'), input);
  const opts = v.digest ? ['-pkeyopt', `digest:${v.digest}`, ...v.opts] : ['-rawin'];
  const r = openssl(['pkeyutl', '-sign', ...PROVIDER, '-inkey', uri, '-in', box.file('door-in'), '-out', box.file('door-sig'), ...opts], { env: box.env });
  t.equal(r.status, 0, `provider door: openssl pkeyutl -sign ${r.stderr.trim()}`);
  const verify = openssl(['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-in', box.file('door-in'), '-sigfile', box.file('door-sig'), ...opts]);
  t.equal(verify.status, 0, `provider door: plain openssl verifies ${verify.stderr.trim()}`);
}

const ENGINE_SO = path.join(ROOT, 'build', 'ossl-modules', 'kmsbridge.so');

/** The ENGINE door: `openssl pkeyutl -engine kmsbridge.so -keyform engine -sign`, verified by plain openssl. */
async function engineDoor(t, box, uri, pub, v) {
  const message = fs.readFileSync(box.file('msg'));
  fs.writeFileSync(box.file('door-in'), crypto.createHash(v.digest).update(message).digest());
  const opts = ['-pkeyopt', `digest:${v.digest}`, ...v.opts];
  const r = openssl(
    ['pkeyutl', '-sign', '-engine', ENGINE_SO, '-keyform', 'engine', '-inkey', uri, '-in', box.file('door-in'), '-out', box.file('door-sig'), ...opts],
    { env: box.env },
  );
  t.equal(r.status, 0, `ENGINE door: openssl pkeyutl -engine -sign ${r.stderr.trim()}`);
  const verify = openssl(['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-in', box.file('door-in'), '-sigfile', box.file('door-sig'), ...opts]);
  t.equal(verify.status, 0, `ENGINE door: plain openssl verifies ${verify.stderr.trim()}`);
}

/** One TLS 1.3 handshake: openssl s_server with |serverArgs|, a plain openssl client verifying against |ca|. */
async function handshake(box, serverArgs, ca) {
  const server = spawn('openssl', ['s_server', '-accept', '127.0.0.1:0', '-naccept', '1', '-www', ...serverArgs], {
    env: box.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    const port = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`s_server did not start: ${out}`)), 30_000);
      const onData = (d) => {
        out += d;
        const m = /ACCEPT .*:(\d+)/.exec(out);
        if (m) (clearTimeout(timer), resolve(Number(m[1])));
      };
      server.stdout.on('data', onData);
      server.stderr.on('data', onData);
      server.once('exit', () => (clearTimeout(timer), reject(new Error(`s_server exited: ${out}`))));
    });
    const r = spawnSync(
      'openssl',
      [
        's_client',
        '-connect',
        `127.0.0.1:${port}`,
        '-servername',
        'localhost',
        '-tls1_3',
        '-CAfile',
        ca,
        '-verify_return_error',
        '-verify_hostname',
        'localhost',
        '-brief',
      ],
      {
        input: 'GET / HTTP/1.0\r\n\r\n',
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    return r.stdout + r.stderr;
  } finally {
    server.kill();
  }
}

/** The Node door: crypto.sign in a fresh process with kmsbridge.load(), verified by openssl. */
async function nodeDoor(t, box, uri, pub, spec) {
  const digest = spec.startsWith('ed') ? null : defaultDigest(spec);
  const script = box.file('node-door.mjs');
  fs.writeFileSync(
    script,
    `import crypto from 'node:crypto';\nimport fs from 'node:fs';\nimport kmsbridge from ${JSON.stringify(path.join(ROOT, 'dist/index.js'))};\n` +
      `const kb = await kmsbridge.load({ timeoutMs: 60000 });\n` +
      `fs.writeFileSync(process.argv[2], crypto.sign(${JSON.stringify(digest)}, fs.readFileSync(process.argv[3]), kb.privateKey(${JSON.stringify(uri)})));\n` +
      `await kb.close();\n`,
  );
  const r = spawnSync(process.execPath, [script, box.file('node-sig'), box.file('msg')], { env: box.env, encoding: 'utf8', timeout: 90_000 });
  t.equal(r.status, 0, `Node door: crypto.sign in-process ${r.stderr.trim()}`);
  const verify = digest
    ? openssl(['dgst', `-${digest}`, '-verify', pub, '-signature', box.file('node-sig'), box.file('msg')])
    : openssl(['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', box.file('msg'), '-sigfile', box.file('node-sig')]);
  t.equal(verify.status, 0, `Node door: openssl verifies ${verify.stderr.trim()}`);
}

// Scenarios are top-level tests (one per backend and key type), so each counts on its own.
for (const backend of selectedFixtures()) {
  {
    const fx = await backend.prepare(t);
    const box = sandbox(t, { keyrings: fx.keyrings });
    Object.assign(box.env, fx.env);
    await startAgent(t, box);
    const client = await AgentClient.connect(box.socket, { timeoutMs: 60_000 });
    t.teardown(() => client.close());
    const message = Buffer.from(`signed on the ${backend.name} backend\n`);
    fs.writeFileSync(box.file('msg'), message);

    for (const spec of backend.specs) {
      t.test(`${backend.name}: ${spec} keys sign and the system openssl verifies`, async (t) => {
        const uri = await backend.createKey(t, box, fx, `x-${spec}`, spec);
        const pub = box.file(`${spec}.pem`);
        await backend.publicKeyPem(t, box, fx, uri, pub);
        const variants = spec.startsWith('rsa')
          ? [
              { alg: 'rsa-pkcs1', digest: 'sha256', opts: [] },
              { alg: 'rsa-pss', digest: 'sha256', salt: 32, opts: ['-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', 'rsa_pss_saltlen:32'] },
              { alg: 'rsa-pss', digest: 'sha384', salt: 48, opts: ['-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', 'rsa_pss_saltlen:48'] },
            ]
          : spec.startsWith('ec')
            ? [{ alg: 'ecdsa', digest: defaultDigest(spec), opts: [] }]
            : [{ alg: 'ed25519' }];
        for (const v of variants) {
          const data = v.digest ? crypto.createHash(v.digest).update(message).digest() : message;
          const f = await client.request(MsgType.SIGN, [
            { tag: Tag.URI, value: uri },
            { tag: Tag.ALGORITHM, value: v.alg },
            ...(v.digest ? [{ tag: Tag.DIGEST, value: v.digest }] : []),
            ...(v.salt !== undefined ? [{ tag: Tag.SALT_LENGTH, value: v.salt }] : []),
            { tag: Tag.DATA, value: data },
          ]);
          fs.writeFileSync(box.file('sig'), f.requireBytes(Tag.RESULT));
          fs.writeFileSync(box.file('in'), data);
          const args = v.digest
            ? ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-in', box.file('in'), '-sigfile', box.file('sig'), '-pkeyopt', `digest:${v.digest}`, ...v.opts]
            : ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', box.file('msg'), '-sigfile', box.file('sig')];
          const r = openssl(args);
          t.equal(r.status, 0, `${v.alg}${v.digest ? ' ' + v.digest : ''}: ${r.stderr.trim() || 'verified'}`);
        }
        // The same key through the other doors: the system openssl with the provider, and Node in-process.
        await providerDoor(t, box, uri, pub, variants[0]);
        if (!spec.startsWith('ed')) await engineDoor(t, box, uri, pub, variants[0]);
        await nodeDoor(t, box, uri, pub, spec);

        // A backend that fixes a key's usage at creation (AWS KMS) decrypts and derives with keys made for that.
        const keyFor = async (use) => {
          const keyring = backend.limits.keyringFor?.[use];
          if (!keyring) return { uri, pub };
          const other = await backend.createKey(t, box, { ...fx, keyring }, `x-${spec}-${use}`, spec);
          const otherPub = box.file(`${spec}-${use}.pem`);
          await backend.publicKeyPem(t, box, fx, other, otherPub);
          return { uri: other, pub: otherPub };
        };
        if (spec.startsWith('rsa')) {
          const dec = await keyFor('decrypt');
          const secret = crypto.randomBytes(24);
          const oaepMd = backend.limits.oaepDigest ?? 'sha256';
          const ct = opensslOk(
            t,
            ['pkeyutl', '-encrypt', '-pubin', '-inkey', dec.pub, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', `rsa_oaep_md:${oaepMd}`],
            { input: secret },
          );
          const f = await client.request(MsgType.DECRYPT, [
            { tag: Tag.URI, value: dec.uri },
            { tag: Tag.ALGORITHM, value: 'rsa-oaep' },
            { tag: Tag.DIGEST, value: oaepMd },
            { tag: Tag.DATA, value: ct },
          ]);
          t.same(f.requireBytes(Tag.RESULT), secret, `OAEP-${oaepMd} decrypts what openssl encrypted`);
          fs.writeFileSync(box.file('ct'), ct);
          const viaProvider = openssl(
            [
              'pkeyutl',
              '-decrypt',
              ...PROVIDER,
              '-inkey',
              dec.uri,
              '-in',
              box.file('ct'),
              '-pkeyopt',
              'rsa_padding_mode:oaep',
              '-pkeyopt',
              `rsa_oaep_md:${oaepMd}`,
            ],
            { env: box.env },
          );
          t.same(viaProvider.stdout, secret, `provider door: openssl pkeyutl -decrypt ${viaProvider.stderr.trim()}`);
        }
        if (spec.startsWith('ec') && !backend.limits.noEcdh) {
          const curve = { 'ec-p256': 'P-256', 'ec-p384': 'P-384', 'ec-p521': 'P-521' }[spec];
          const peer = box.file(`peer-${spec}.pem`);
          opensslOk(t, ['genpkey', '-algorithm', 'EC', '-pkeyopt', `ec_paramgen_curve:${curve}`, '-out', peer]);
          const peerSpki = opensslOk(t, ['pkey', '-in', peer, '-pubout', '-outform', 'DER']);
          const agree = await keyFor('ecdh');
          const f = await client.request(MsgType.DERIVE, [
            { tag: Tag.URI, value: agree.uri },
            { tag: Tag.PEER_KEY, value: peerSpki },
          ]);
          const expected = opensslOk(t, ['pkeyutl', '-derive', '-inkey', peer, '-peerkey', agree.pub]);
          t.same(f.requireBytes(Tag.RESULT), expected, 'ECDH matches openssl pkeyutl -derive');
          const peerPub = box.file(`peer-${spec}.pub.pem`);
          opensslOk(t, ['pkey', '-in', peer, '-pubout', '-out', peerPub]);
          const viaProvider = openssl(['pkeyutl', '-derive', ...PROVIDER, '-inkey', agree.uri, '-peerkey', peerPub], { env: box.env });
          t.same(viaProvider.stdout, expected, `provider door: openssl pkeyutl -derive ${viaProvider.stderr.trim()}`);
        }
      });
    }

    t.test(`${backend.name}: a certificate made through the provider serves TLS 1.3 from s_server, through the provider and the ENGINE`, async (t) => {
      const uri = await backend.createKey(t, box, fx, 'tls', 'ec-p256');
      const cert = box.file('tls.crt');
      let r = openssl(
        ['req', ...PROVIDER, '-new', '-x509', '-key', uri, '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-days', '1', '-out', cert],
        { env: box.env },
      );
      t.equal(r.status, 0, `openssl req -x509 through the provider ${r.stderr.trim()}`);
      r = openssl(['verify', '-CAfile', cert, cert]);
      t.match(r.stdout.toString(), /OK/, 'the self-signed certificate verifies with plain openssl');
      for (const [door, args] of [
        ['provider', [...PROVIDER, '-key', uri]],
        ['ENGINE', ['-engine', ENGINE_SO, '-keyform', 'engine', '-key', uri]],
      ]) {
        const out = await handshake(box, ['-cert', cert, ...args], cert);
        t.match(out, /Verification: OK/, `${door} door: a plain openssl client completes TLS 1.3 and verifies the certificate`);
      }
    });

    t.test(`${backend.name}: describe reports the same public key the independent tool read`, async (t) => {
      // an EC key and an RSA key: a token holds their public halves differently (RSA's on the private object too)
      const specs = [backend.specs.find((s) => s.startsWith('ec')), backend.specs.find((s) => s.startsWith('rsa'))].filter(Boolean);
      for (const spec of specs.length ? specs : [backend.specs[0]]) {
        const uri = await backend.createKey(t, box, fx, `describe-${spec}`, spec);
        const pub = box.file(`describe-${spec}.pem`);
        await backend.publicKeyPem(t, box, fx, uri, pub);
        const f = await client.request(MsgType.DESCRIBE, [{ tag: Tag.URI, value: uri }]);
        const spki = opensslOk(t, ['pkey', '-pubin', '-in', pub, '-outform', 'DER']);
        t.same(f.requireBytes(Tag.PUBLIC_KEY), spki, `${spec}: the same SubjectPublicKeyInfo`);
      }
    });

    t.test(`${backend.name}: random bytes`, async (t) => {
      const f = await client.request(MsgType.RANDOM, [
        { tag: Tag.LENGTH, value: 48 },
        { tag: Tag.KEYRING, value: fx.keyring },
      ]);
      t.equal(f.requireBytes(Tag.RESULT).length, 48);
    });
  }
}
