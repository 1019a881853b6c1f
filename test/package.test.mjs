// The Node contract from a user's side: a fresh project installs the packed
// kmsbridge and runs the README's snippet as written, with require() and with
// import; the signature it makes is verified by openssl.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { sandbox, cliOk, ROOT } from './lib/env.mjs';

const box = sandbox(t);
const uri = cliOk(t, box, ['keys', 'create', 'web', '--keyring', 'local', '--type', 'ec-p256']).trim();
cliOk(t, box, ['keys', 'export', uri, '-o', box.file('web.pub.pem')]);

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, env: box.env, ...opts });
  if (r.error) throw r.error;
  return r;
}

// npm runs with the real HOME: its cache and the machine's npm settings (e.g. nodedir for offline node-gyp) live there.
const npmEnv = { ...box.env, HOME: process.env.HOME };
const pack = sh('npm', ['pack', '--pack-destination', box.dir], { cwd: ROOT, env: npmEnv });
const tarball = path.join(box.dir, pack.stdout.trim().split('\n').pop());
const app = box.file('app');
fs.mkdirSync(app);
fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
const install = sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], { cwd: app, env: npmEnv });

t.test('npm install of the packed kmsbridge builds it in a fresh project', async (t) => {
  t.equal(pack.status, 0, pack.stderr);
  t.equal(
    install.status,
    0,
    install.stderr
      .split('\n')
      .filter((l) => !/warn/.test(l))
      .join('\n'),
  );
  t.ok(fs.existsSync(path.join(app, 'node_modules/kmsbridge/build/Release/kmsbridge.node')), 'kmsbridge.node built');
  t.ok(fs.existsSync(path.join(app, 'node_modules/kmsbridge/build/ossl-modules/kmsbridge.so')), 'kmsbridge.so built');
  const v = sh('npx', ['kmsbridge', '--version'], { cwd: app, env: npmEnv });
  t.equal(v.stdout.trim(), '0.1.0', 'npx kmsbridge runs');
});

const snippet = (
  style,
) => `${style === 'cjs' ? "const kmsbridge = require('kmsbridge');\nconst crypto = require('node:crypto'); const fs = require('node:fs');\n(async () => {" : "import * as kmsbridge from 'kmsbridge';\nimport crypto from 'node:crypto'; import fs from 'node:fs';\n{"}
const data = Buffer.from('${style} snippet');
const kb = await kmsbridge.load();
fs.writeFileSync('sig.${style}', crypto.sign('sha256', data, kb.privateKey('${uri}')));
fs.writeFileSync('ref.${style}.pem', kb.keyRef('${uri}'));
await kb.close();
${style === 'cjs' ? '})();' : '}'}
`;

for (const style of ['cjs', 'mjs']) {
  t.test(`the README snippet runs with ${style === 'cjs' ? 'require' : 'import * as'} and openssl verifies its signature`, async (t) => {
    fs.writeFileSync(path.join(app, `snippet.${style}`), snippet(style));
    const r = sh(process.execPath, [`snippet.${style}`], { cwd: app, timeout: 60_000 });
    t.equal(r.status, 0, r.stderr);
    fs.writeFileSync(path.join(app, `msg.${style}`), `${style} snippet`);
    const v = sh('openssl', ['dgst', '-sha256', '-verify', box.file('web.pub.pem'), '-signature', `sig.${style}`, `msg.${style}`], { cwd: app });
    t.match(v.stdout, /Verified OK/);
    t.match(fs.readFileSync(path.join(app, `ref.${style}.pem`), 'utf8'), /-----BEGIN KMSBRIDGE KEY URI-----/);
  });
}
