// Backend fixtures for the cross-backend suite (test/cross-backend.test.mjs).
// Each backend says how to configure a keyring of its kind, which key types it
// has, how to create a key, and how to read a key's public half through a
// tool independent of kmsbridge (for the local store there is none, so its
// public key comes from `kmsbridge keys export` and is checked against the
// store elsewhere, in local-store.test.mjs).
//
// A fixture:
//   name:      the backend type
//   specs:     key types the suite exercises on it
//   prepare(t) -> { keyrings: { <name>: settings }, env: {...}, keyring: '<name>' }
//              sets up the key manager itself (token, test server) for one test file
//   createKey(t, box, fx, name, spec) -> uri
//   publicKeyPem(t, box, fx, uri, file) writes the key's public half to `file` (PEM) by an independent tool
//   limits:    { pssSaltDigestOnly?, digestsBySpec?, maxEd25519Message?, sha1?, noEcdh?, keyringFor? } what the backend refuses by design;
//              keyringFor: { decrypt?, ecdh? } names a keyring whose new keys are made for that use, where the
//              backend fixes a key's usage when it is created (AWS KMS: SIGN_VERIFY, ENCRYPT_DECRYPT, KEY_AGREEMENT)
import fs from 'node:fs';
import { GetPublicKeyCommand } from '@aws-sdk/client-kms';
import { cliOk } from './env.mjs';
import { SOFTHSM_LIB, makeToken, readPublicKeyPem } from './softhsm.mjs';
import { awsEnv, sdkClient, spkiPem, startTestKms } from '../aws-kms-server/index.mjs';

export const FIXTURES = {
  local: {
    name: 'local',
    specs: ['rsa-2048', 'rsa-3072', 'ec-p256', 'ec-p384', 'ec-p521', 'ed25519'],
    async prepare() {
      return { keyrings: { kr: { type: 'local' } }, env: {}, keyring: 'kr' };
    },
    async createKey(t, box, fx, name, spec) {
      return cliOk(t, box, ['keys', 'create', name, '--keyring', fx.keyring, '--type', spec], { env: fx.env }).trim();
    },
    async publicKeyPem(t, box, fx, uri, file) {
      cliOk(t, box, ['keys', 'export', uri, '--format', 'pem', '-o', file], { env: fx.env });
    },
    limits: {},
  },
  pkcs11: {
    name: 'pkcs11',
    specs: ['rsa-2048', 'rsa-3072', 'ec-p256', 'ec-p384', 'ec-p521', 'ed25519'],
    // A fresh SoftHSM2 token; kmsbridge creates the keys on it, pkcs11-tool reads their public halves.
    async prepare(t) {
      const token = makeToken(t, { label: 'kmsbridge-xb' });
      return {
        keyrings: { hsm: { type: 'pkcs11', library: SOFTHSM_LIB, token_label: token.label, pin_env: 'KMSBRIDGE_TEST_HSM_PIN', max_sessions: 4 } },
        env: { ...token.env, KMSBRIDGE_TEST_HSM_PIN: token.pin },
        keyring: 'hsm',
        token,
      };
    },
    async createKey(t, box, fx, name, spec) {
      return cliOk(t, box, ['keys', 'create', name, '--keyring', fx.keyring, '--type', spec], { env: fx.env }).trim();
    },
    async publicKeyPem(t, box, fx, uri, file) {
      readPublicKeyPem(t, fx.token, uri, file);
    },
    // SoftHSM2 does OAEP only with SHA-1 (MGF1-SHA-1, no label).
    limits: { oaepDigest: 'sha1' },
  },
  aws: {
    name: 'aws',
    specs: ['rsa-2048', 'rsa-3072', 'ec-p256', 'ec-p384', 'ec-p521', 'ed25519'],
    // The AWS KMS test double (test/aws-kms-server/), reached with fake credentials; one keyring per key usage.
    async prepare(t) {
      const server = await startTestKms(t);
      const base = { type: 'aws', region: server.region, endpoint: server.url, timeout_ms: 20000 };
      return {
        keyrings: { aws: base, 'aws-dec': { ...base, key_usage: 'ENCRYPT_DECRYPT' }, 'aws-ecdh': { ...base, key_usage: 'KEY_AGREEMENT' } },
        env: awsEnv(),
        keyring: 'aws',
        server,
      };
    },
    async createKey(t, box, fx, name, spec) {
      return cliOk(t, box, ['keys', 'create', name, '--keyring', fx.keyring, '--type', spec], { env: fx.env }).trim();
    },
    // GetPublicKey straight from the key manager with the AWS SDK, not through kmsbridge.
    async publicKeyPem(t, box, fx, uri, file) {
      const keyId = uri.slice(uri.indexOf('/') + 1);
      const client = sdkClient(fx.server);
      try {
        const r = await client.send(new GetPublicKeyCommand({ KeyId: keyId }));
        fs.writeFileSync(file, spkiPem(r.PublicKey));
      } finally {
        client.destroy();
      }
    },
    limits: {
      pssSaltDigestOnly: true,
      digestsBySpec: { 'ec-p256': ['sha256'], 'ec-p384': ['sha384'], 'ec-p521': ['sha512'] },
      maxEd25519Message: 4096,
      sha1: false,
      keyringFor: { decrypt: 'aws-dec', ecdh: 'aws-ecdh' },
    },
  },
};

/** The backends to run: all, or those named in KMSBRIDGE_TEST_BACKENDS (comma-separated). */
export function selectedFixtures() {
  const only = process.env.KMSBRIDGE_TEST_BACKENDS?.split(',').filter(Boolean);
  return Object.values(FIXTURES).filter((f) => !only || only.includes(f.name));
}
