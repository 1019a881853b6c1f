// The PKCS#11 backend's small parsers and encoders, checked against
// independent implementations: RFC 7512 key-ids, DigestInfo and ECDSA DER
// signatures (verified by the system openssl), SubjectPublicKeyInfo built from
// token attributes (compared with what Node's OpenSSL exports).
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openssl } from './lib/env.mjs';
import { parseKeyId, formatKeyId } from '../dist/backends/pkcs11/key-id.js';
import { digestInfo, ecdsaSignatureToDer, ecPointOfAttribute, ecSpki, rsaSpki, curveOfParams, ED25519_PARAMS } from '../dist/backends/pkcs11/der.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsbridge-der-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const file = (n) => path.join(dir, n);
const message = Buffer.from('DER the token does not give us\n');

t.test('RFC 7512 key-ids: id as hex or percent-encoded, label or object, both; errors say what a good one looks like', async (t) => {
  t.same(parseKeyId('id=01'), { id: Buffer.from([1]) });
  t.same(parseKeyId('id=%01%a2'), { id: Buffer.from([1, 0xa2]) });
  t.same(parseKeyId('label=web'), { label: 'web' });
  t.same(parseKeyId('id=%01;label=web'), { id: Buffer.from([1]), label: 'web' });
  t.same(parseKeyId('pkcs11:object=my%20key;type=private'), { label: 'my key' });
  t.same(parseKeyId('label=caf%C3%A9'), { label: 'café' });
  t.same(parseKeyId('token=prod;id=0a0b'), { token: 'prod', id: Buffer.from([10, 11]) });
  t.same(parseKeyId('id=abc'), { id: Buffer.from('abc') }, 'odd-length or non-hex ids are bytes as written');
  t.throws(() => parseKeyId('colour=blue'), { codeName: 'BAD_REQUEST', message: /attribute 'colour' is not supported; use id=<hex>, label=<name>/ });
  t.throws(() => parseKeyId('id=01;id=02'), { message: /gives id twice/ });
  t.throws(() => parseKeyId('type=public;label=x'), { message: /type=public/ });
  t.throws(() => parseKeyId('label=x?pin-value=1234'), { message: /PINs and modules belong in the keyring config/ });
  t.throws(() => parseKeyId('token=prod'), { message: /names no key/ });
  t.throws(() => parseKeyId('label=%zz'), { message: /bad percent-encoding/ });
  for (const sel of [{ id: Buffer.from([1, 2]) }, { label: 'web server' }, { id: Buffer.from([0xff]), label: 'a;b=c' }]) {
    t.same(parseKeyId(formatKeyId(sel)), sel, `${formatKeyId(sel)} reads back`);
  }
});

t.test('CKM_RSA_PKCS over our DigestInfo is a PKCS#1 v1.5 signature openssl verifies, for every digest', async (t) => {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  fs.writeFileSync(file('rsa.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
  for (const d of ['sha1', 'sha224', 'sha256', 'sha384', 'sha512']) {
    const h = crypto.createHash(d).update(message).digest();
    // What a token's CKM_RSA_PKCS does with its input: type-1 padding and the private-key operation.
    fs.writeFileSync(file('sig'), crypto.privateEncrypt({ key: privateKey, padding: crypto.constants.RSA_PKCS1_PADDING }, digestInfo(d, h)));
    fs.writeFileSync(file('in'), h);
    const r = openssl(['pkeyutl', '-verify', '-pubin', '-inkey', file('rsa.pem'), '-in', file('in'), '-sigfile', file('sig'), '-pkeyopt', `digest:${d}`]);
    t.equal(r.status, 0, `${d}: ${r.stderr.trim() || 'verified'}`);
  }
});

t.test('ECDSA r‖s becomes a DER signature openssl verifies, on every curve', async (t) => {
  for (const curve of ['P-256', 'P-384', 'P-521']) {
    const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: curve });
    fs.writeFileSync(file('ec.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
    fs.writeFileSync(file('msg'), message);
    let ok = 0;
    for (let i = 0; i < 16; i++) {
      // 16 signatures: some r or s have the top bit set or leading zeros, which DER must handle.
      const rs = crypto.sign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      fs.writeFileSync(file('sig'), ecdsaSignatureToDer(rs));
      if (openssl(['dgst', '-sha256', '-verify', file('ec.pem'), '-signature', file('sig'), file('msg')]).status === 0) ok++;
    }
    t.equal(ok, 16, `${curve}: openssl verifies all 16`);
  }
});

t.test('SubjectPublicKeyInfo from token attributes matches what OpenSSL exports', async (t) => {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
  const j = rsa.export({ format: 'jwk' });
  t.same(
    rsaSpki(Buffer.from(j.n, 'base64url'), Buffer.from(j.e, 'base64url')),
    rsa.export({ type: 'spki', format: 'der' }),
    'RSA from CKA_MODULUS and CKA_PUBLIC_EXPONENT',
  );
  for (const curve of ['P-256', 'P-384', 'P-521']) {
    const ec = crypto.generateKeyPairSync('ec', { namedCurve: curve }).publicKey;
    const spki = ec.export({ type: 'spki', format: 'der' });
    const point = spki.subarray(spki.length - (curve === 'P-521' ? 133 : curve === 'P-384' ? 97 : 65));
    const wrapped = Buffer.concat([Buffer.from([0x04]), point.length < 128 ? Buffer.from([point.length]) : Buffer.from([0x81, point.length]), point]);
    t.same(ecPointOfAttribute(wrapped, curve), point, `${curve}: CKA_EC_POINT in its DER OCTET STRING`);
    t.same(ecPointOfAttribute(point, curve), point, `${curve}: a bare CKA_EC_POINT`);
    t.same(ecSpki(curve, point), spki, `${curve}: SPKI`);
  }
  const ed = crypto.generateKeyPairSync('ed25519').publicKey;
  const edSpki = ed.export({ type: 'spki', format: 'der' });
  const raw = edSpki.subarray(edSpki.length - 32);
  t.same(ecSpki('Ed25519', ecPointOfAttribute(Buffer.concat([Buffer.from([4, 32]), raw]), 'Ed25519')), edSpki, 'Ed25519');
  t.equal(curveOfParams(ED25519_PARAMS.oid), 'Ed25519');
  t.equal(curveOfParams(ED25519_PARAMS.name), 'Ed25519', 'the PKCS#11 3.0 curve name, as pkcs11-tool writes it');
  t.same(curveOfParams(Buffer.from('06052b81040023', 'hex')), 'P-521');
  t.match(curveOfParams(Buffer.from('06052b8104000a', 'hex')), { unknown: 'OID 1.3.132.0.10' }, 'secp256k1 is named, not guessed');
});
