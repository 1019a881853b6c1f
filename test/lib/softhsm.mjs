// A fresh SoftHSM2 token per test file, in its own directory (SOFTHSM2_CONF),
// and pkcs11-tool from OpenSC as the tool independent of kmsbridge that makes
// keys on it and reads their public halves back.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const SOFTHSM_LIB = '/usr/lib/softhsm/libsofthsm2.so';
/** OpenSC's logging PKCS#11 module: forwards to PKCS11SPY and writes every call to PKCS11SPY_OUTPUT. */
export const PKCS11_SPY = ['/usr/lib/x86_64-linux-gnu/pkcs11-spy.so', '/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so'].find((p) => fs.existsSync(p));

/** Initializes a token labelled `label` in a private directory; removed when the test ends. */
export function makeToken(t, { label = 'kmsbridge-test', pin = '246810', soPin = '13579135' } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsbridge-softhsm-'));
  fs.chmodSync(dir, 0o700);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'tokens'));
  const conf = path.join(dir, 'softhsm2.conf');
  fs.writeFileSync(conf, `directories.tokendir = ${path.join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const token = { dir, conf, label, pin, soPin, env: { SOFTHSM2_CONF: conf } };
  initToken(token);
  return token;
}

/**
 * A second token beside `token` (same directory and SOFTHSM2_CONF, same PINs), labelled `label`; deleted when the test
 * ends, so that the file's other tests see the first token alone.
 */
export function addToken(t, token, label) {
  const other = { ...token, label };
  initToken(other);
  t.teardown(() => spawnSync('softhsm2-util', ['--delete-token', '--token', label], { env: { ...process.env, ...token.env } }));
  return other;
}

function initToken({ label, soPin, pin, env }) {
  const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`softhsm2-util --init-token failed: ${r.stderr}${r.stdout}`);
}

/** Runs pkcs11-tool on the token (logged in unless login: false); { status, stdout (Buffer), stderr }. */
export function p11tool(token, args, { login = true, pin = token.pin } = {}) {
  const full = ['--module', SOFTHSM_LIB, '--token-label', token.label, ...(login ? ['--login', '--pin', pin] : []), ...args];
  const r = spawnSync('pkcs11-tool', full, { env: { ...process.env, SOFTHSM2_CONF: token.conf }, timeout: 120_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

export function p11toolOk(t, token, args, opts) {
  const r = p11tool(token, args, opts);
  if (r.status !== 0) t.fail(`pkcs11-tool ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** pkcs11-tool's selector for a kms: URI's key-id (label=… or id=…, as kmsbridge prints them). */
export function p11Selector(uri) {
  const keyId = uri.slice(uri.indexOf('/') + 1);
  const args = [];
  for (const part of keyId.split(';')) {
    const [k, v] = part.split('=');
    if (k === 'label') args.push('--label', decodeURIComponent(v));
    if (k === 'id') args.push('--id', v.includes('%') ? Buffer.from(decodeURIComponent(v), 'latin1').toString('hex') : v);
  }
  return args;
}

/**
 * Writes the public key of `uri` to `file` as PEM, read by pkcs11-tool and
 * converted by openssl (pkcs11-tool writes DER for RSA/EC and PEM for Ed25519).
 * OpenSC 0.23 cannot export P-384 public keys ("cannot create EVP_PKEY"); for
 * those the point and curve are taken from pkcs11-tool's object listing and
 * wrapped in a SubjectPublicKeyInfo here, which openssl then has to accept.
 */
export function readPublicKeyPem(t, token, uri, file) {
  const raw = `${file}.p11`;
  const r = p11tool(token, ['--read-object', '--type', 'pubkey', ...p11Selector(uri), '-o', raw], { login: false });
  let form = 'DER';
  if (r.status === 0) {
    if (fs.readFileSync(raw).subarray(0, 10).toString('latin1').startsWith('-----')) form = 'PEM';
  } else {
    fs.writeFileSync(raw, ecSpkiFromListing(t, token, uri, r.stderr));
  }
  const o = spawnSync('openssl', ['pkey', '-pubin', '-inform', form, '-in', raw, '-out', file]);
  if (o.status !== 0) t.fail(`openssl could not read the public key pkcs11-tool gave for ${uri}: ${o.stderr}`);
}

function der(tag, content) {
  const n = content.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, content]);
}

function ecSpkiFromListing(t, token, uri, whyNotExported) {
  const listing = p11toolOk(t, token, ['--list-objects', '--type', 'pubkey'], { login: false }).toString();
  const sel = p11Selector(uri);
  const want = (flag) => (sel.includes(flag) ? sel[sel.indexOf(flag) + 1] : undefined);
  const block = listing
    .split(/^(?=Public Key Object)/m)
    .find(
      (b) =>
        (want('--label') === undefined || b.includes(`label:      ${want('--label')}\n`)) &&
        (want('--id') === undefined || b.includes(`ID:         ${want('--id')}\n`)),
    );
  const point = block && /EC_POINT:\s+([0-9a-f]+)/.exec(block)?.[1];
  const params = block && /EC_PARAMS:\s+([0-9a-f]+)/.exec(block)?.[1];
  if (!point || !params) {
    t.fail(`pkcs11-tool could not export the public key of ${uri} (${whyNotExported.trim()}) and does not list its EC point`);
    return Buffer.alloc(0);
  }
  let p = Buffer.from(point, 'hex');
  if (p[0] === 0x04 && p[1] === p.length - 2) p = p.subarray(2); // CKA_EC_POINT is a DER OCTET STRING
  const ecPublicKey = Buffer.from('06072a8648ce3d0201', 'hex');
  return der(0x30, Buffer.concat([der(0x30, Buffer.concat([ecPublicKey, Buffer.from(params, 'hex')])), der(0x03, Buffer.concat([Buffer.from([0]), p]))]));
}
