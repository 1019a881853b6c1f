// What `kmsbridge conf` writes, used as users use it: OPENSSL_CONF for the
// openssl CLI (with the opt-in random generator), for Node (nodejs_conf), and
// the STORE loader's listing of a keyring.
import t from 'tap';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { sandbox, cliOk, startAgent, openssl } from './lib/env.mjs';

const box = sandbox(t);
await startAgent(t, box);
const uris = ['a', 'b', 'c'].map((n) => cliOk(t, box, ['keys', 'create', n, '--keyring', 'local', '--type', n === 'b' ? 'rsa-2048' : 'ec-p256']).trim());
const modules = cliOk(t, box, ['modules-dir']).trim();
const randOps = () =>
  fs
    .readFileSync(box.file('audit.log'), 'utf8')
    .split('\n')
    .filter((l) => l.includes('"op":"random"')).length;

t.test('openssl storeutl lists every key of a keyring through the provider', async (t) => {
  const r = openssl(['storeutl', '-provider-path', modules, '-provider', 'default', '-provider', 'kmsbridge', 'kms:local/'], { env: box.env });
  t.equal(r.status, 0, r.stderr);
  const names = [...r.stdout.toString().matchAll(/Name: (\S+)/g)].map((m) => m[1]).sort();
  t.same(names, uris.sort());
  t.match(r.stdout.toString(), /Total found: 3/);
});

t.test('kmsbridge conf --rand makes every random byte of openssl come from the key manager, audited; without it none does', async (t) => {
  cliOk(t, box, ['conf', '--rand', '-o', box.file('rand.cnf')]);
  cliOk(t, box, ['conf', '-o', box.file('plain.cnf')]);
  const before = randOps();
  const r = openssl(['rand', '-hex', '32'], { env: { ...box.env, OPENSSL_CONF: box.file('rand.cnf') } });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout.toString(), /^[0-9a-f]{64}\n$/);
  await new Promise((res) => setTimeout(res, 100));
  t.ok(randOps() > before, 'the agent audited RANDOM requests');
  const mid = randOps();
  t.equal(openssl(['rand', '-hex', '32'], { env: { ...box.env, OPENSSL_CONF: box.file('plain.cnf') } }).status, 0);
  await new Promise((res) => setTimeout(res, 100));
  t.equal(randOps(), mid, 'without --rand, openssl keeps its own generator');
});

t.test('kmsbridge conf --node: Node with OPENSSL_CONF alone signs with a key-reference PEM through the agent', async (t) => {
  cliOk(t, box, ['conf', '--node', '-o', box.file('node.cnf')]);
  cliOk(t, box, ['keyref', uris[0], '-o', box.file('a.ref.pem')]);
  cliOk(t, box, ['keys', 'export', uris[0], '-o', box.file('a.pub.pem')]);
  fs.writeFileSync(box.file('msg'), 'signed by plain Node, configured by openssl.cnf\n');
  const script = `const c = require('node:crypto'), fs = require('node:fs');
    fs.writeFileSync(process.argv[1], c.sign('sha256', fs.readFileSync(process.argv[2]), c.createPrivateKey(fs.readFileSync(process.argv[3]))));`;
  const r = spawnSync(process.execPath, ['-e', script, box.file('sig'), box.file('msg'), box.file('a.ref.pem')], {
    env: { ...box.env, OPENSSL_CONF: box.file('node.cnf') },
    encoding: 'utf8',
    timeout: 30_000,
  });
  t.equal(r.status, 0, r.stderr);
  const v = openssl(['dgst', '-sha256', '-verify', box.file('a.pub.pem'), '-signature', box.file('sig'), box.file('msg')]);
  t.match(v.stdout.toString(), /Verified OK/);
});
