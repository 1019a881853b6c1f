/**
 * The PKCS#11 backend: keys on an HSM or a software token (SoftHSM2,
 * Kryoptic), reached through the vendor's PKCS#11 library, which only the
 * KeyService process loads. Applications never see the library or the PIN.
 *
 *   [keyrings.hsm]
 *   type = "pkcs11"
 *   library = "/usr/lib/softhsm/libsofthsm2.so"
 *   token_label = "prod"      # or slot = 0
 *   pin_env = "HSM_PIN"       # or pin_file = "/etc/kmsbridge/hsm.pin" (0600/0400), or pin = "…" (development)
 *   max_sessions = 8
 *
 * Key-ids are RFC 7512 attributes (see pkcs11/key-id.ts): kms:hsm/id=01,
 * kms:hsm/label=web, kms:hsm/id=%01;label=web. Keys this backend creates get
 * CKA_LABEL = the name and a fresh random CKA_ID; their key-id is label=<name>.
 *
 * Mechanisms: CKM_RSA_PKCS over a DigestInfo built here, CKM_RSA_PKCS_PSS,
 * CKM_ECDSA (r‖s turned into DER), CKM_EDDSA, CKM_RSA_PKCS_OAEP,
 * CKM_RSA_PKCS (decrypt, where the keyring allows it), CKM_ECDH1_DERIVE and
 * C_GenerateRandom. describe() offers only what the token's mechanism list and
 * the key's own usage flags allow.
 */
import crypto from 'node:crypto';
import { isMainThread } from 'node:worker_threads';
import type { ECDH1, Mechanism, RsaOAEP, RsaPSS, Template } from 'pkcs11js';
import { ErrorCode, KmsError, badRequest, keyUnusable, notFound, unsupported } from '../errors.js';
import type { KeyringConfig } from '../config.js';
import { DIGESTS, type Algorithm, type DecryptRequest, type Digest, type KeySpec, type SignRequest } from '../types.js';
import type { Backend, BackendKeyDescription, BackendKeySummary, GrantOptions, Pkcs11Grant, Progress } from './backend.js';
import { native } from '../native.js';
import * as C from './pkcs11/constants.js';
import { CURVES, ED25519_PARAMS, curveParams, digestInfo, ecdsaSignatureToDer, type PkCurve } from './pkcs11/der.js';
import { describeSelector, formatKeyId, parseKeyId } from './pkcs11/key-id.js';
import {
  checkTokenOf,
  findObjects,
  keyIdsFor,
  kindName,
  notFoundDetail,
  privateKeys,
  publicKeyOf,
  publicObjects,
  readKey,
  selectorTemplate,
  serviceCurve,
  type TokenKey,
} from './pkcs11/objects.js';
import { libraryReport, objectsReport, type Pkcs11Report } from './pkcs11/report.js';
import { settingsOf, type Pkcs11Settings } from './pkcs11/settings.js';
import { ckrName, ckrOf, slotNumber, ulong } from './pkcs11/library.js';
import { Token, type Session } from './pkcs11/token.js';

export type { Pkcs11Report } from './pkcs11/report.js';

const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

const HASH_MECH: Record<Digest, number> = { sha1: C.CKM_SHA_1, sha224: C.CKM_SHA224, sha256: C.CKM_SHA256, sha384: C.CKM_SHA384, sha512: C.CKM_SHA512 };
const MGF1: Record<Digest, number> = {
  sha1: C.CKG_MGF1_SHA1,
  sha224: C.CKG_MGF1_SHA224,
  sha256: C.CKG_MGF1_SHA256,
  sha384: C.CKG_MGF1_SHA384,
  sha512: C.CKG_MGF1_SHA512,
};

/** Which mechanism each algorithm needs, and which usage flag of the key. */
const ALGORITHM_NEEDS: Record<Algorithm, { mech: number; use: 'sign' | 'decrypt' | 'derive'; keyType: TokenKey['keyType'] }> = {
  'rsa-pkcs1': { mech: C.CKM_RSA_PKCS, use: 'sign', keyType: 'rsa' },
  'rsa-pss': { mech: C.CKM_RSA_PKCS_PSS, use: 'sign', keyType: 'rsa' },
  'rsa-oaep': { mech: C.CKM_RSA_PKCS_OAEP, use: 'decrypt', keyType: 'rsa' },
  'rsa-pkcs1-decrypt': { mech: C.CKM_RSA_PKCS, use: 'decrypt', keyType: 'rsa' },
  ecdsa: { mech: C.CKM_ECDSA, use: 'sign', keyType: 'ec' },
  ecdh: { mech: C.CKM_ECDH1_DERIVE, use: 'derive', keyType: 'ec' },
  ed25519: { mech: C.CKM_EDDSA, use: 'sign', keyType: 'ed25519' },
};

const GENERATE: Record<KeySpec, { mech: number; keyType: number; rsaBits?: number; curve?: PkCurve }> = {
  'rsa-2048': { mech: C.CKM_RSA_PKCS_KEY_PAIR_GEN, keyType: C.CKK_RSA, rsaBits: 2048 },
  'rsa-3072': { mech: C.CKM_RSA_PKCS_KEY_PAIR_GEN, keyType: C.CKK_RSA, rsaBits: 3072 },
  'rsa-4096': { mech: C.CKM_RSA_PKCS_KEY_PAIR_GEN, keyType: C.CKK_RSA, rsaBits: 4096 },
  'ec-p256': { mech: C.CKM_EC_KEY_PAIR_GEN, keyType: C.CKK_EC, curve: 'P-256' },
  'ec-p384': { mech: C.CKM_EC_KEY_PAIR_GEN, keyType: C.CKK_EC, curve: 'P-384' },
  'ec-p521': { mech: C.CKM_EC_KEY_PAIR_GEN, keyType: C.CKK_EC, curve: 'P-521' },
  ed25519: { mech: C.CKM_EC_EDWARDS_KEY_PAIR_GEN, keyType: C.CKK_EC_EDWARDS, curve: 'Ed25519' },
};

// ---- the backend ------------------------------------------------------------------

interface CachedKey {
  key: TokenKey;
  /** The token generation it was found in: after a reset, handles are looked up again. */
  gen: number;
}

let poolAllowed = isMainThread;

/**
 * Whether a slow token call may go to libuv's thread pool. For the agent it
 * may, so one slow HSM does not stall the others. For the in-process worker
 * it must not: the application's own async crypto calls on kms: keys can
 * hold every pool thread while they wait for that worker, and a call queued
 * behind them would never run. The token threads (pkcs11/thread-host.ts),
 * which serve only the agent and the CLI, allow it.
 */
function onPool(s: { threadSafe: boolean }): boolean {
  return s.threadSafe && poolAllowed;
}

export function allowPool(): void {
  poolAllowed = true;
}

/** What the token thread learns from a backend it hosts. */
export interface Pkcs11Hooks {
  /** Grants made for this keyring may name void sessions or handles from now on. */
  grantsVoided?: () => void;
  /** The keyring's settings were read (and warned about) before, by the client of the token thread. */
  settingsRead?: boolean;
}

export class Pkcs11Backend implements Backend {
  readonly type = 'pkcs11';
  readonly replaceableKeys = true;
  readonly settings: Pkcs11Settings;
  /** The library, named in timeout messages. */
  readonly location: string;
  private readonly token: Token;
  private readonly keys = new Map<string, CachedKey>();
  private creating: Promise<unknown> = Promise.resolve();
  /** Whether grants (the agent's serving threads signing on the token) may exist for this keyring. */
  private granted = false;
  private closed = false;

  constructor(
    private readonly cfg: KeyringConfig,
    private readonly hooks: Pkcs11Hooks = {},
  ) {
    this.settings = settingsOf(cfg, !hooks.settingsRead);
    this.location = this.settings.library;
    // Sessions and handles void (token reset, fork, re-initialization): so are the grants naming them.
    this.token = new Token({ keyring: cfg.name, ...this.settings }, () => this.revokeGrants());
  }

  private revokeGrants(): void {
    this.hooks.grantsVoided?.();
    if (this.granted) native().revokeKeyringGrants(this.cfg.name);
  }

  private ref(keyId: string): string {
    return `kms:${this.cfg.name}/${keyId}`;
  }

  /** Runs on a session; pkcs11js errors become KmsErrors that say what to check. */
  private async op<T>(what: string, signal: AbortSignal, fn: (s: Session) => T | Promise<T>, opts: { login?: boolean; keyId?: string } = {}): Promise<T> {
    try {
      return await this.token.run(signal, fn, {
        ...(opts.login === false ? { login: false } : {}),
        onStaleObject: () => (opts.keyId !== undefined ? this.keys.delete(opts.keyId) : this.keys.clear()),
      });
    } catch (err) {
      throw this.explain(err, what);
    }
  }

  private explain(err: unknown, what: string): KmsError {
    if (err instanceof KmsError) return err;
    const rv = ckrOf(err);
    const name = ckrName(err);
    const tok = this.token.name;
    switch (rv) {
      case undefined:
        return new KmsError(ErrorCode.INTERNAL, `${what}: the PKCS#11 binding failed: ${name}`, { cause: err });
      case C.CKR_MECHANISM_INVALID:
      case C.CKR_MECHANISM_PARAM_INVALID:
        return unsupported(`${what}: ${tok} does not support the mechanism or its parameters (${name}); kmsbridge doctor lists what it offers`);
      case C.CKR_KEY_FUNCTION_NOT_PERMITTED:
        return keyUnusable(`${what}: the key's attributes on ${tok} forbid this use (${name}: CKA_SIGN, CKA_DECRYPT or CKA_DERIVE is false)`);
      case C.CKR_KEY_TYPE_INCONSISTENT:
      case C.CKR_KEY_SIZE_RANGE:
        return unsupported(`${what}: ${tok} cannot do this with this key (${name})`);
      case C.CKR_ENCRYPTED_DATA_INVALID:
      case C.CKR_ENCRYPTED_DATA_LEN_RANGE:
        return badRequest(`${what}: decryption failed`);
      case C.CKR_DATA_INVALID:
      case C.CKR_DATA_LEN_RANGE:
        return badRequest(`${what}: ${tok} rejected the input (${name})`);
      case C.CKR_USER_NOT_LOGGED_IN:
        return new KmsError(ErrorCode.ACCESS_DENIED, `${what}: ${tok} says the session is not logged in (${name}), even after logging in again`);
      case C.CKR_TOKEN_NOT_PRESENT:
      case C.CKR_DEVICE_REMOVED:
      case C.CKR_SLOT_ID_INVALID:
      case C.CKR_DEVICE_ERROR:
      case C.CKR_TOKEN_NOT_RECOGNIZED:
        return new KmsError(
          ErrorCode.BACKEND_UNAVAILABLE,
          `${what}: ${tok} went away (${name}); check the HSM and its connection — kmsbridge finds it again at the next request`,
        );
      case C.CKR_SESSION_COUNT:
        return new KmsError(
          ErrorCode.BACKEND_UNAVAILABLE,
          `${what}: ${tok} has no session left (${name}); lower max_sessions in [keyrings.${this.cfg.name}] or close other applications' sessions`,
        );
      default:
        return new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `${what}: ${tok} failed (${name})`, { cause: err });
    }
  }

  /** The private key a key-id names: exactly one, or an error listing what is there. */
  private key(s: Session, keyId: string): TokenKey {
    const cached = this.keys.get(keyId);
    if (cached && cached.gen === this.token.generation) return cached.key;
    const sel = parseKeyId(keyId);
    checkTokenOf(sel, this.settings.tokenLabel, keyId);
    let found = findObjects(s, selectorTemplate(C.CKO_PRIVATE_KEY, sel));
    if (found.length === 0) {
      this.token.confirmLogin(s); // private objects are invisible, not an error, to a session that lost its login
      found = findObjects(s, selectorTemplate(C.CKO_PRIVATE_KEY, sel));
    }
    if (found.length === 0) {
      throw notFound(`key ${this.ref(keyId)} not found: no private key with ${describeSelector(sel)} on ${this.token.name}; ${notFoundDetail(s, sel)}`);
    }
    if (found.length > 1) {
      const all = found.map((h) => readKey(s, h)).map((k) => (typeof k === 'string' ? k : `${formatKeyId(k)} (${kindName(k)})`));
      throw badRequest(`key-id '${keyId}' matches ${found.length} private keys on ${this.token.name}: ${all.join(', ')}; give both id= and label= to pick one`);
    }
    const key = readKey(s, found[0]!);
    if (typeof key === 'string') throw unsupported(`key ${this.ref(keyId)} is ${key}`);
    this.keys.set(keyId, { key, gen: this.token.generation });
    return key;
  }

  private need(s: Session, mech: number, what: string): void {
    if (this.token.mechanismsOf(s).has(mech)) return;
    throw unsupported(
      `${what}: ${this.token.name} does not offer ${C.MECHANISM_NAMES[mech] ?? `mechanism 0x${mech.toString(16)}`} (run kmsbridge doctor to see what it offers)`,
    );
  }

  private allows(s: Session, k: TokenKey, alg: Algorithm): boolean {
    const need = ALGORITHM_NEEDS[alg];
    return need.keyType === k.keyType && k[need.use] && this.token.mechanismsOf(s).has(need.mech);
  }

  async describe(keyId: string, signal: AbortSignal): Promise<BackendKeyDescription> {
    return this.op(
      `describe ${this.ref(keyId)}`,
      signal,
      (s) => {
        // Read afresh: another program may have made a new key under this id (replaceableKeys).
        const before = this.keys.get(keyId)?.key.handle;
        this.keys.delete(keyId);
        const k = this.key(s, keyId);
        if (before && !before.equals(k.handle)) this.revokeGrants(); // nothing granted of the old object is used
        const publicKey = publicKeyOf(s, k, this.ref(keyId));
        const algorithms = (Object.keys(ALGORITHM_NEEDS) as Algorithm[]).filter((a) => this.allows(s, k, a));
        const curve = serviceCurve(k);
        return {
          keyType: k.keyType,
          bits: k.bits,
          ...(curve ? { curve } : {}),
          publicKey,
          algorithms,
          digests: k.keyType === 'ed25519' ? [] : [...DIGESTS],
          pssSalt: 'any' as const,
        };
      },
      { keyId },
    );
  }

  /** The PIN again after Init, for keys that ask for it at every use. */
  private authenticate(s: Session, k: TokenKey): void {
    if (k.alwaysAuthenticate) this.token.contextLogin(s);
  }

  async sign(keyId: string, req: SignRequest, signal: AbortSignal): Promise<Buffer> {
    const what = `sign with ${this.ref(keyId)}`;
    return this.op(
      what,
      signal,
      async (s) => {
        const k = this.key(s, keyId);
        const need = ALGORITHM_NEEDS[req.algorithm];
        if (k.keyType !== need.keyType) throw unsupported(`${what}: key is ${kindName(k)}, it cannot do ${req.algorithm}`);
        this.need(s, need.mech, what);
        let mech: Mechanism;
        let data = req.data;
        let outLen: number;
        switch (req.algorithm) {
          case 'rsa-pkcs1':
            mech = { mechanism: C.CKM_RSA_PKCS };
            if (req.digest) data = digestInfo(req.digest, req.data);
            outLen = k.modulus!.length;
            break;
          case 'rsa-pss': {
            const digest = req.digest!;
            const parameter: RsaPSS = { type: C.CK_PARAMS_RSA_PSS, hashAlg: HASH_MECH[digest], mgf: MGF1[req.mgf1Digest ?? digest], saltLen: req.saltLength! };
            mech = { mechanism: C.CKM_RSA_PKCS_PSS, parameter };
            outLen = k.modulus!.length;
            break;
          }
          case 'ecdsa':
            mech = { mechanism: C.CKM_ECDSA };
            outLen = 2 * CURVES[k.curve!].size;
            break;
          case 'ed25519':
            mech = { mechanism: C.CKM_EDDSA };
            outLen = 64;
            break;
        }
        s.lib.C_SignInit(s.handle, mech, k.handle);
        s.opActive = true;
        this.authenticate(s, k);
        const out = Buffer.alloc(outLen + 16);
        const sig = onPool(s) ? await s.lib.C_SignAsync(s.handle, data, out) : s.lib.C_Sign(s.handle, data, out);
        s.opActive = false;
        return req.algorithm === 'ecdsa' ? ecdsaSignatureToDer(sig) : Buffer.from(sig);
      },
      { keyId },
    );
  }

  /**
   * What the agent's serving threads need to repeat an approved signature on
   * the token themselves (src-native/node/pkcs11_sign.c): the module, slot
   * and key handle. Only with a library initialized for OS locking (the
   * threads call it at once), not for keys that want the PIN at every use,
   * and only where max_sessions leaves room for the threads' sessions.
   */
  async grant(keyId: string, req: SignRequest, signal: AbortSignal, opts: GrantOptions): Promise<Pkcs11Grant | undefined> {
    return this.op(
      `grant ${this.ref(keyId)}`,
      signal,
      (s) => {
        if (!s.threadSafe) return undefined;
        const k = this.key(s, keyId);
        if (k.alwaysAuthenticate || !this.allows(s, k, req.algorithm)) return undefined;
        if (req.algorithm === 'rsa-pss' && req.saltLength === undefined) return undefined;
        // The threads' sessions come out of max_sessions, so the token never sees more than that from us.
        const maxInside = this.token.reserveForGrants(opts.tokenThreads);
        if (maxInside < 1) return undefined;
        const gen = this.token.generation;
        this.granted = true;
        return {
          pkcs11: { module: this.settings.library, slot: slotNumber(s.slot), object: ulong(k.handle), maxInside },
          stillValid: () => this.token.generation === gen && !this.closed,
        };
      },
      { keyId },
    );
  }

  async decrypt(keyId: string, req: DecryptRequest, signal: AbortSignal): Promise<Buffer> {
    const what = `decrypt with ${this.ref(keyId)}`;
    return this.op(
      what,
      signal,
      async (s) => {
        const k = this.key(s, keyId);
        if (k.keyType !== 'rsa') throw unsupported(`${what}: key is ${kindName(k)}, it cannot decrypt`);
        let mech: Mechanism;
        if (req.algorithm === 'rsa-oaep') {
          this.need(s, C.CKM_RSA_PKCS_OAEP, what);
          const digest = req.digest ?? 'sha1';
          const parameter: RsaOAEP = {
            type: C.CK_PARAMS_RSA_OAEP,
            hashAlg: HASH_MECH[digest],
            mgf: MGF1[req.mgf1Digest ?? digest],
            source: C.CKZ_DATA_SPECIFIED,
            ...(req.label && req.label.length > 0 ? { sourceData: req.label } : {}),
          };
          mech = { mechanism: C.CKM_RSA_PKCS_OAEP, parameter };
        } else {
          this.need(s, C.CKM_RSA_PKCS, what);
          mech = { mechanism: C.CKM_RSA_PKCS };
        }
        try {
          s.lib.C_DecryptInit(s.handle, mech, k.handle);
        } catch (err) {
          const rv = ckrOf(err);
          if (req.algorithm === 'rsa-oaep' && (rv === C.CKR_ARGUMENTS_BAD || rv === C.CKR_MECHANISM_PARAM_INVALID)) {
            const digest = req.digest ?? 'sha1';
            throw unsupported(
              `${what}: ${this.token.name} refuses OAEP with ${digest}, MGF1-${req.mgf1Digest ?? digest}${req.label?.length ? ' and a label' : ''} (${ckrName(err)}); ` +
                `some tokens (SoftHSM2) do OAEP only with SHA-1, MGF1-SHA-1 and no label`,
            );
          }
          throw err;
        }
        s.opActive = true;
        this.authenticate(s, k);
        const out = Buffer.alloc(k.modulus!.length);
        const plain = onPool(s) ? await s.lib.C_DecryptAsync(s.handle, req.data, out) : s.lib.C_Decrypt(s.handle, req.data, out);
        s.opActive = false;
        return Buffer.from(plain);
      },
      { keyId },
    );
  }

  async derive(keyId: string, peerSpki: Buffer, signal: AbortSignal): Promise<Buffer> {
    const what = `derive with ${this.ref(keyId)}`;
    return this.op(
      what,
      signal,
      async (s) => {
        const k = this.key(s, keyId);
        if (k.keyType !== 'ec') throw unsupported(`${what}: key is ${kindName(k)}; ECDH needs a P-256, P-384 or P-521 key`);
        this.need(s, C.CKM_ECDH1_DERIVE, what);
        const point = peerPoint(peerSpki, k.curve as Exclude<PkCurve, 'Ed25519'>);
        const size = CURVES[k.curve!].size;
        const template: Template = [
          { type: C.CKA_CLASS, value: C.CKO_SECRET_KEY },
          { type: C.CKA_KEY_TYPE, value: C.CKK_GENERIC_SECRET },
          { type: C.CKA_TOKEN, value: false },
          { type: C.CKA_SENSITIVE, value: false },
          { type: C.CKA_EXTRACTABLE, value: true },
          { type: C.CKA_VALUE_LEN, value: size },
        ];
        const parameter: ECDH1 = { type: C.CK_PARAMS_EC_DH, kdf: C.CKD_NULL, publicData: point };
        const mech: Mechanism = { mechanism: C.CKM_ECDH1_DERIVE, parameter };
        const secret = onPool(s) ? await s.lib.C_DeriveKeyAsync(s.handle, mech, k.handle, template) : s.lib.C_DeriveKey(s.handle, mech, k.handle, template);
        try {
          const [v] = s.lib.C_GetAttributeValue(s.handle, secret, [{ type: C.CKA_VALUE }]);
          if (!v?.value) throw new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `${what}: ${this.token.name} did not return the shared secret`);
          return Buffer.from(v.value);
        } finally {
          s.lib.C_DestroyObject(s.handle, secret);
        }
      },
      { keyId },
    );
  }

  async random(length: number, signal: AbortSignal): Promise<Buffer> {
    return this.op(`random from ${this.token.name}`, signal, (s) => Buffer.from(s.lib.C_GenerateRandom(s.handle, Buffer.alloc(length))));
  }

  async create(name: string, spec: KeySpec, signal: AbortSignal, progress?: Progress): Promise<{ keyId: string }> {
    if (!KEY_NAME.test(name)) {
      throw badRequest(
        `key name '${name}' is not valid for keyring '${this.cfg.name}': use letters, digits, '_', '.', '-' (at most 128); it becomes the key's CKA_LABEL`,
      );
    }
    // One creation at a time per keyring, so "no key has this label yet" still holds when the pair is made.
    const run = this.creating.then(() => this.doCreate(name, spec, signal, progress));
    this.creating = run.catch(() => undefined);
    return run;
  }

  private async doCreate(name: string, spec: KeySpec, signal: AbortSignal, progress?: Progress): Promise<{ keyId: string }> {
    const keyId = formatKeyId({ label: name });
    const what = `create ${this.ref(keyId)}`;
    return this.op(what, signal, async (s) => {
      if (findObjects(s, selectorTemplate(C.CKO_PRIVATE_KEY, { label: name })).length > 0) {
        throw new KmsError(
          ErrorCode.ALREADY_EXISTS,
          `a private key labelled '${name}' already exists on ${this.token.name} (${this.ref(keyId)}); pick another name or delete it first`,
        );
      }
      const g = GENERATE[spec];
      this.need(s, g.mech, what);
      progress?.(`generating ${spec} key '${name}' on ${this.token.name}`);
      const id = crypto.randomBytes(16);
      const label = Buffer.from(name, 'utf8');
      const common = (cls: number): Template => [
        { type: C.CKA_CLASS, value: cls },
        { type: C.CKA_KEY_TYPE, value: g.keyType },
        { type: C.CKA_TOKEN, value: true },
        { type: C.CKA_LABEL, value: label },
        { type: C.CKA_ID, value: id },
      ];
      const isRsa = g.keyType === C.CKK_RSA;
      const isEc = g.keyType === C.CKK_EC;
      const priv: Template = [
        ...common(C.CKO_PRIVATE_KEY),
        { type: C.CKA_PRIVATE, value: true },
        { type: C.CKA_SENSITIVE, value: true },
        { type: C.CKA_EXTRACTABLE, value: false },
        { type: C.CKA_SIGN, value: true },
        ...(isRsa ? [{ type: C.CKA_DECRYPT, value: true }] : []),
        ...(isEc ? [{ type: C.CKA_DERIVE, value: true }] : []),
      ];
      const pub = (params?: Buffer): Template => [
        ...common(C.CKO_PUBLIC_KEY),
        { type: C.CKA_PRIVATE, value: false },
        { type: C.CKA_VERIFY, value: true },
        ...(isRsa
          ? [
              { type: C.CKA_ENCRYPT, value: true },
              { type: C.CKA_MODULUS_BITS, value: g.rsaBits! },
              { type: C.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
            ]
          : [{ type: C.CKA_EC_PARAMS, value: params! }]),
      ];
      const generate = (params?: Buffer) =>
        onPool(s)
          ? s.lib.C_GenerateKeyPairAsync(s.handle, { mechanism: g.mech }, pub(params), priv)
          : Promise.resolve(s.lib.C_GenerateKeyPair(s.handle, { mechanism: g.mech }, pub(params), priv));
      if (isRsa) await generate();
      else if (g.curve !== 'Ed25519') await generate(curveParams(g.curve!));
      else {
        // RFC 8410 OID first (SoftHSM2), then the PKCS#11 3.0 curve name.
        try {
          await generate(ED25519_PARAMS.oid);
        } catch (err) {
          const rv = ckrOf(err);
          const paramsRefused = [C.CKR_ATTRIBUTE_VALUE_INVALID, C.CKR_CURVE_NOT_SUPPORTED, C.CKR_DOMAIN_PARAMS_INVALID, C.CKR_TEMPLATE_INCONSISTENT];
          if (rv === undefined || !paramsRefused.includes(rv)) throw err;
          await generate(ED25519_PARAMS.name);
        }
      }
      this.keys.delete(keyId);
      return { keyId };
    });
  }

  async list(signal: AbortSignal): Promise<BackendKeySummary[]> {
    return this.op(`list the keys of ${this.token.name}`, signal, (s) => {
      const { keys } = privateKeys(s);
      const ids = keyIdsFor(keys);
      const out: BackendKeySummary[] = [];
      for (const k of keys) {
        const keyId = ids.get(k);
        if (keyId === undefined) continue; // neither id nor label: nothing a URI can name
        const curve = serviceCurve(k);
        out.push({ keyId, keyType: k.keyType, bits: k.bits, ...(curve ? { curve } : {}) });
      }
      return out.sort((a, b) => a.keyId.localeCompare(b.keyId));
    });
  }

  async delete(keyId: string, signal: AbortSignal): Promise<void> {
    await this.op(
      `delete ${this.ref(keyId)}`,
      signal,
      (s) => {
        const k = this.key(s, keyId);
        const pubs = publicObjects(s, k);
        s.lib.C_DestroyObject(s.handle, k.handle);
        this.keys.delete(keyId);
        for (const p of pubs) s.lib.C_DestroyObject(s.handle, p);
      },
      { keyId },
    );
    this.keys.clear(); // other key-ids may have named the same key
    this.revokeGrants(); // and so may their grants
  }

  async protectionSummary(): Promise<string> {
    const pin = this.settings.pin ? `PIN from ${this.settings.pin.origin}` : 'no PIN configured';
    return `PKCS#11 ${this.token.name} through ${this.settings.library} (keys stay on the token: created sensitive and non-extractable); ${pin}`;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.keys.clear();
    this.revokeGrants();
    // Finalizing the module under a serving thread still inside it would be undefined behaviour: wait for it, or leave the module be.
    const quiet = !this.granted || native().pkcs11Quiesce(this.settings.library, this.cfg.timeoutMs);
    await this.token.close({ finalize: quiet });
  }

  /**
   * What `kmsbridge doctor` shows: the library, every slot and token, the
   * keyring's token with its PIN state, mechanisms and objects. Logs in only
   * when `login` is set and the token reports no failed login since the last
   * success, so running doctor cannot walk a token toward lockout.
   */
  async doctor(signal: AbortSignal, opts: { login: boolean }): Promise<Pkcs11Report> {
    const report: Pkcs11Report = { library: this.settings.library, slots: [], notes: [] };
    let lib;
    try {
      lib = this.token.loadedLibrary();
    } catch (err) {
      report.notes.push(err instanceof Error ? err.message : String(err));
      return report;
    }
    if (!libraryReport(lib, report, (err) => this.explain(err, 'reading the slots').message)) return report;

    // Public view first: no PIN needed.
    try {
      await this.op(
        'doctor',
        signal,
        (s) => {
          report.token = `${this.token.name} in slot ${slotNumber(s.slot)}`;
          report.pinStatus = this.token.pinStatus(s);
          const mechs = this.token.mechanismsOf(s);
          report.mechanisms = Object.entries(C.MECHANISM_NAMES).map(([m, name]) => ({ name, offered: mechs.has(Number(m)) }));
          report.sessions = `up to ${this.token.sessionLimit} (max_sessions ${this.settings.maxSessions}, and the token's own limit)`;
          report.objects = objectsReport(s);
        },
        { login: false },
      );
    } catch (err) {
      report.notes.push((err as Error).message);
      return report;
    }

    const risky = (report.pinStatus ?? []).some((p) => /locked|final try|count low/.test(p));
    if (!opts.login) {
      report.notes.push('not logged in (--no-login): private objects are not shown');
    } else if (!this.settings.pin) {
      report.notes.push('no PIN configured: private objects are not shown');
    } else if (risky) {
      report.notes.push(
        `not logged in: the token reports user PIN ${report.pinStatus!.join(', ')}; check ${this.settings.pin.origin} before anything tries it again`,
      );
    } else {
      try {
        await this.op('doctor (logged in)', signal, (s) => {
          report.objects = objectsReport(s);
        });
      } catch (err) {
        report.notes.push((err as Error).message);
      }
    }
    return report;
  }
}

/** The peer's EC point (uncompressed) from its SPKI, after checking it is on the key's curve. */
function peerPoint(spki: Buffer, curve: Exclude<PkCurve, 'Ed25519'>): Buffer {
  let peer: crypto.KeyObject;
  try {
    peer = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    throw badRequest('peer public key is not a valid SubjectPublicKeyInfo');
  }
  const jwk = peer.export({ format: 'jwk' });
  if (peer.asymmetricKeyType !== 'ec' || jwk.crv !== curve || !jwk.x || !jwk.y) {
    throw unsupported(`peer public key (${peer.asymmetricKeyType}${jwk.crv ? ' ' + jwk.crv : ''}) is not on the key's curve ${curve}`);
  }
  const size = CURVES[curve].size;
  const coord = (b64: string) => {
    const v = Buffer.from(b64, 'base64url');
    return Buffer.concat([Buffer.alloc(size - v.length), v]);
  };
  return Buffer.concat([Buffer.from([4]), coord(jwk.x), coord(jwk.y)]);
}
