/**
 * The KeyService: everything that knows about keys. It resolves kms: URIs to
 * keyrings and backends, enforces each keyring's policy before a backend is
 * asked anything, bounds every backend call by the keyring's timeout, and
 * caches descriptions (public keys) per keyring. The agent and the
 * in-process worker both run one of these.
 *
 * verify and encrypt are public-key operations, here so that callers who want
 * every use of a key audited (the ENGINE's REMOTE_PUBKEY mode) can send them
 * to the key manager's side: a backend that offers them does them, otherwise
 * the KeyService does them with the key's public key from describe.
 */
import { isMainThread } from 'node:worker_threads';
import { ErrorCode, KmsError, asKmsError, badRequest, keyUnusable, notFound, unsupported } from './errors.js';
import type { Config, KeyringConfig } from './config.js';
import { fileUnchanged, type Backend, type BackendGrant, type FileIdentity, type GrantOptions, type Progress } from './backends/backend.js';
import { native, type NativeKeyHandle, type NativeOpOptions } from './native.js';
import { BACKENDS, createBackend, type BackendFactory } from './backends/index.js';
import { formatKeyUri, parseKeyUri, type KeyUri } from './uri.js';
import {
  DIGEST_SIZE,
  KEY_SPECS,
  isDigest,
  type DecryptRequest,
  type Digest,
  type EncryptRequest,
  type KeyDescription,
  type KeySpec,
  type KeySummary,
  type SignRequest,
  type VerifyRequest,
} from './types.js';

export const MAX_RANDOM = 65536;

/** A signature that may run without the KeyService's dispatch (KeyService.grant). */
export type SignGrant = BackendGrant & { keyring: string; dataLength: number };

interface Keyring {
  config: KeyringConfig;
  backend: Backend;
  descriptions: Map<string, CachedDescription>;
}

/**
 * A key's description as asked of its backend; value once it has arrived, for answers made without waiting; source:
 * the key file it was read from, if it has one (it holds while that file does).
 */
interface CachedDescription {
  promise: Promise<KeyDescription>;
  value?: KeyDescription;
  source?: FileIdentity;
}

/** A description from the cache and the key file it was read from, if any. */
export interface CurrentDescription {
  description: KeyDescription;
  source?: FileIdentity;
}

/** Who is asking: the agent fills this from SO_PEERCRED. */
export interface Peer {
  pid: number;
  uid: number;
  gid: number;
}

export class KeyService {
  private readonly keyrings = new Map<string, Keyring>();
  private closed = false;

  constructor(
    readonly config: Config,
    private readonly factories: Record<string, BackendFactory> = BACKENDS,
  ) {}

  keyringNames(): string[] {
    return [...this.config.keyrings.keys()];
  }

  keyringConfig(name: string): KeyringConfig {
    const cfg = this.config.keyrings.get(name);
    if (!cfg) {
      const known = this.keyringNames().join(', ') || 'none';
      const where = this.config.source ? `config ${this.config.source}` : 'the built-in default config';
      throw notFound(`unknown keyring '${name}' (known in ${where}: ${known})`);
    }
    return cfg;
  }

  private keyring(name: string): Keyring {
    if (this.closed) throw new KmsError(ErrorCode.BACKEND_UNAVAILABLE, 'the KeyService is shutting down');
    let kr = this.keyrings.get(name);
    if (!kr) {
      const config = this.keyringConfig(name);
      kr = { config, backend: createBackend(config, this.factories), descriptions: new Map() };
      this.keyrings.set(name, kr);
    }
    return kr;
  }

  /** Whether a peer may use a keyring: the agent's own uid always; others only where the config allows them. */
  mayUse(keyring: string, peer: Peer, ownUid: number): boolean {
    if (peer.uid === ownUid) return true;
    const agent = this.config.agent;
    const kr = this.config.keyrings.get(keyring);
    const uids = [...agent.allowUids, ...(kr?.allowUids ?? [])];
    const gids = [...agent.allowGids, ...(kr?.allowGids ?? [])];
    return uids.includes(peer.uid) || gids.includes(peer.gid);
  }

  /**
   * Who may connect at all, as the agent's threads check it when they accept (serve.c): mayUse() admits a peer for
   * some keyring exactly when its uid is the owner's or listed, or its gid is listed. Null with no keyring: nobody.
   */
  connectPolicy(ownUid: number): { ownUid: number; uids: number[]; gids: number[] } | null {
    const keyrings = [...this.config.keyrings.values()];
    if (keyrings.length === 0) return null;
    const agent = this.config.agent;
    return {
      ownUid,
      uids: [...new Set([...agent.allowUids, ...keyrings.flatMap((k) => k.allowUids)])],
      gids: [...new Set([...agent.allowGids, ...keyrings.flatMap((k) => k.allowGids)])],
    };
  }

  /** Runs one backend call under the keyring's timeout; the backend sees the abort signal. */
  private async call<T>(kr: Keyring, what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ms = kr.config.timeoutMs;
    const ctl = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        // Reject first: aborting makes the backend reject too, and the timeout is the error to report.
        reject(
          new KmsError(
            ErrorCode.TIMEOUT,
            `keyring '${kr.config.name}' (${kr.config.type}${kr.backend.location ? ', ' + kr.backend.location : ''}) did not answer ${what} within ${ms} ms; check the key manager, or raise timeout_ms in [keyrings.${kr.config.name}]`,
          ),
        );
        ctl.abort();
      }, ms);
    });
    const latency = kr.config.injectLatencyMs;
    const work = latency > 0 ? sleep(latency, ctl.signal).then(() => fn(ctl.signal)) : fn(ctl.signal);
    try {
      return await Promise.race([work, timeout]);
    } catch (err) {
      throw asKmsError(err);
    } finally {
      clearTimeout(timer);
    }
  }

  private resolve(uri: string): { parsed: KeyUri; kr: Keyring } {
    const parsed = parseKeyUri(uri);
    return { parsed, kr: this.keyring(parsed.keyring) };
  }

  /** What the key is and what the keyring lets callers do with it. */
  async describe(uri: string): Promise<KeyDescription> {
    const { parsed, kr } = this.resolve(uri);
    // A key another program may have replaced under this id unseen is read afresh; the cache then holds what was read.
    if (kr.backend.replaceableKeys) kr.descriptions.delete(parsed.keyId);
    return applyPolicy(kr.config, await this.describeRaw(uri));
  }

  /** What the backend can do with the key, before the keyring's policy; cached while its key file is unchanged. */
  private async describeRaw(uri: string): Promise<KeyDescription> {
    const { parsed, kr } = this.resolve(uri);
    let cached = this.currentEntry(kr, parsed.keyId);
    if (!cached) {
      const entry: CachedDescription = {
        promise: this.call(kr, `describe ${uri}`, (s) => kr.backend.describe(parsed.keyId, s)).then(({ source, ...d }) => {
          if (source) entry.source = source;
          return { uri, ...d };
        }),
      };
      entry.promise.then(
        (d) => (entry.value = d),
        () => kr.descriptions.get(parsed.keyId) === entry && kr.descriptions.delete(parsed.keyId), // never cache a failure
      );
      kr.descriptions.set(parsed.keyId, entry);
      cached = entry;
    }
    return cached.promise;
  }

  /** The cache entry of a key, unless it was read from a key file since replaced or deleted (then it is dropped). */
  private currentEntry(kr: Keyring, keyId: string): CachedDescription | undefined {
    const cached = kr.descriptions.get(keyId);
    if (cached?.source && !fileUnchanged(cached.source)) {
      kr.descriptions.delete(keyId);
      return undefined;
    }
    return cached;
  }

  /**
   * The key's description as describe() answers it now from the cache, if it has arrived and still holds; never for a
   * key describe() reads afresh each time (replaceableKeys).
   */
  cachedDescription(uri: string): CurrentDescription | undefined {
    const { parsed, kr } = this.resolve(uri);
    if (kr.backend.replaceableKeys) return undefined;
    const entry = this.currentEntry(kr, parsed.keyId);
    if (!entry?.value) return undefined;
    return { description: applyPolicy(kr.config, entry.value), ...(entry.source ? { source: entry.source } : {}) };
  }

  async sign(uri: string, req: SignRequest): Promise<Buffer> {
    const { parsed, kr } = this.resolve(uri);
    const desc = await this.describeRaw(uri);
    checkSignature(kr.config, desc, req, 'sign');
    return this.call(kr, `sign with ${uri}`, (s) => kr.backend.sign(parsed.keyId, req, s));
  }

  /**
   * For the fast paths (grants): what a thread needs to run this signature
   * without the dispatch, if the KeyService would approve it and the backend
   * can hand the key over (a local key, or, with tokenThreads, a key on a PKCS#11
   * token this process is logged in to; no injected latency). Undefined
   * otherwise; never an error.
   */
  async grant(uri: string, req: SignRequest, opts: GrantOptions): Promise<SignGrant | undefined> {
    try {
      const { parsed, kr } = this.resolve(uri);
      const backend = kr.backend;
      if (!backend.grant || kr.config.injectLatencyMs > 0) return undefined;
      if (backend.type === 'pkcs11' && opts.tokenThreads < 1) return undefined;
      if (!grantable(req, backend.type)) return undefined;
      checkSignature(kr.config, await this.describeRaw(uri), req, 'sign');
      const g = await this.call(kr, `grant ${uri}`, (s) => backend.grant!(parsed.keyId, req, s, opts));
      return g && { ...g, keyring: kr.config.name, dataLength: req.digest ? DIGEST_SIZE[req.digest] : 0 };
    } catch {
      return undefined;
    }
  }

  async decrypt(uri: string, req: DecryptRequest): Promise<Buffer> {
    const { parsed, kr } = this.resolve(uri);
    const desc = await this.describeRaw(uri);
    checkDecrypt(kr.config, desc, req);
    return this.call(kr, `decrypt with ${uri}`, (s) => kr.backend.decrypt(parsed.keyId, req, s));
  }

  /** Resolves if the signature is valid; a KmsError BAD_SIGNATURE if it is not. */
  async verify(uri: string, req: VerifyRequest): Promise<void> {
    const { parsed, kr } = this.resolve(uri);
    const desc = await this.describeRaw(uri);
    checkSignature(kr.config, desc, req, 'verify');
    const backend = kr.backend;
    const ok = backend.verify
      ? await this.call(kr, `verify with ${uri}`, (s) => backend.verify!(parsed.keyId, req, s))
      : await publicOp('verify')(publicHandle(desc), nativeOptions(desc, req), req.data, req.signature);
    if (!ok) throw new KmsError(ErrorCode.BAD_SIGNATURE, `signature does not verify with ${uri}`);
  }

  /** The ciphertext of req.data under the key's public key. */
  async encrypt(uri: string, req: EncryptRequest): Promise<Buffer> {
    const { parsed, kr } = this.resolve(uri);
    const desc = await this.describeRaw(uri);
    checkEncrypt(kr.config, desc, req);
    const backend = kr.backend;
    if (backend.encrypt) return this.call(kr, `encrypt with ${uri}`, (s) => backend.encrypt!(parsed.keyId, req, s));
    const options: NativeOpOptions =
      req.algorithm === 'rsa-oaep'
        ? { padding: 'oaep', digest: req.digest ?? 'sha1', mgf1Digest: req.mgf1Digest ?? req.digest ?? 'sha1', ...(req.label ? { label: req.label } : {}) }
        : { padding: 'pkcs1' };
    return publicOp('encrypt')(publicHandle(desc), options, req.data);
  }

  async derive(uri: string, peerKey: Buffer): Promise<Buffer> {
    const { parsed, kr } = this.resolve(uri);
    const desc = await this.describe(uri);
    if (!desc.algorithms.includes('ecdh')) throw wrongAlgorithm(desc, 'ecdh');
    if (peerKey.length === 0) throw badRequest('ECDH needs the peer public key');
    return this.call(kr, `derive with ${uri}`, (s) => kr.backend.derive(parsed.keyId, peerKey, s));
  }

  async random(length: number, keyring?: string): Promise<Buffer> {
    if (!Number.isInteger(length) || length < 1 || length > MAX_RANDOM) {
      throw badRequest(`random: length ${length} is outside 1..${MAX_RANDOM}`);
    }
    const name = keyring ?? this.keyringNames()[0];
    if (!name) throw notFound('no keyring is configured to draw random bytes from');
    const kr = this.keyring(name);
    return this.call(kr, 'random', (s) => kr.backend.random(length, s));
  }

  async create(keyring: string, name: string, spec: string, progress?: Progress): Promise<KeyDescription> {
    if (!(KEY_SPECS as readonly string[]).includes(spec)) {
      throw unsupported(`key type '${spec}' is not one of ${KEY_SPECS.join(', ')}`);
    }
    const kr = this.keyring(keyring);
    // RSA-4096 generation can take seconds: allow it more than a signature.
    const { keyId } = await this.call(kr, `create ${name}`, (s) => kr.backend.create(name, spec as KeySpec, s, progress));
    kr.descriptions.delete(keyId);
    return this.describe(formatKeyUri(keyring, keyId));
  }

  async list(keyring?: string): Promise<KeySummary[]> {
    const names = keyring ? [keyring] : this.keyringNames();
    const out: KeySummary[] = [];
    for (const name of names) {
      const kr = this.keyring(name);
      for (const k of await this.call(kr, 'list', (s) => kr.backend.list(s))) {
        const { keyId, ...rest } = k;
        out.push({ uri: formatKeyUri(name, keyId), ...rest });
      }
    }
    return out;
  }

  async delete(uri: string): Promise<void> {
    const { parsed, kr } = this.resolve(uri);
    kr.descriptions.delete(parsed.keyId);
    try {
      await this.call(kr, `delete ${uri}`, (s) => kr.backend.delete(parsed.keyId, s));
    } finally {
      kr.descriptions.delete(parsed.keyId);
    }
  }

  async protectionSummary(keyring: string): Promise<string> {
    return this.keyring(keyring).backend.protectionSummary();
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.keyrings.values()];
    this.keyrings.clear();
    await Promise.allSettled(all.map((kr) => kr.backend.close()));
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(t), reject(new Error('aborted'))), { once: true });
  });
}

// ---- public-key operations ---------------------------------------------------

/** Native handles of public keys, one per cached description (a refreshed description gets a new one). */
const publicHandles = new WeakMap<KeyDescription, NativeKeyHandle>();

function publicHandle(d: KeyDescription): NativeKeyHandle {
  let h = publicHandles.get(d);
  if (!h) {
    try {
      h = native().loadPublicKey(d.publicKey);
    } catch (err) {
      throw keyUnusable(`the public key the key manager reported for ${d.uri} cannot be decoded (${(err as Error).message})`);
    }
    publicHandles.set(d, h);
  }
  return h;
}

/**
 * As the local backend does for private keys: libuv's pool from the main
 * thread, the calling thread in the in-process worker (pool threads may be
 * the ones waiting for it).
 */
function publicOp(op: 'verify'): (h: NativeKeyHandle, o: NativeOpOptions, data: Buffer, sig: Buffer) => Promise<boolean>;
function publicOp(op: 'encrypt'): (h: NativeKeyHandle, o: NativeOpOptions, data: Buffer) => Promise<Buffer>;
function publicOp(op: 'verify' | 'encrypt') {
  const addon = native();
  if (op === 'verify') {
    if (isMainThread) return addon.verify;
    return async (h: NativeKeyHandle, o: NativeOpOptions, data: Buffer, sig: Buffer) => addon.verifyNow(h, o, data, sig);
  }
  if (isMainThread) return addon.encrypt;
  return async (h: NativeKeyHandle, o: NativeOpOptions, data: Buffer) => addon.encryptNow(h, o, data);
}

function nativeOptions(d: KeyDescription, req: SignRequest): NativeOpOptions {
  const digest = req.digest ? { digest: req.digest } : {};
  switch (req.algorithm) {
    case 'rsa-pkcs1':
      return { padding: 'pkcs1', ...digest };
    case 'rsa-pss':
      // No salt length: any is accepted (recovered from the signature).
      return { padding: 'pss', ...digest, mgf1Digest: req.mgf1Digest ?? req.digest!, ...(req.saltLength !== undefined ? { saltLength: req.saltLength } : {}) };
    case 'ecdsa':
    case 'ed25519':
      if (d.keyType === 'rsa') throw wrongAlgorithm(d, req.algorithm);
      return { padding: 'none', ...digest };
  }
}

// ---- policy ------------------------------------------------------------------

/** Narrows what the backend can do to what the keyring allows. */
function applyPolicy(cfg: KeyringConfig, d: KeyDescription): KeyDescription {
  return {
    ...d,
    algorithms: d.algorithms.filter((a) => a !== 'rsa-pkcs1-decrypt' || cfg.allowPkcs1Decrypt),
    digests: d.digests.filter((g) => g !== 'sha1' || cfg.allowSha1),
  };
}

function managerName(cfg: KeyringConfig): string {
  const names: Record<string, string> = { aws: 'AWS KMS', pkcs11: 'the PKCS#11 token', local: 'the local key store' };
  return names[cfg.type] ?? `the ${cfg.type} key manager`;
}

function keyLabel(d: KeyDescription): string {
  return `${d.uri} (${d.keyType}${d.curve ? ' ' + d.curve : d.keyType === 'rsa' ? '-' + d.bits : ''})`;
}

function wrongAlgorithm(d: KeyDescription, alg: string): KmsError {
  return unsupported(`key ${keyLabel(d)} does not allow ${alg}; it allows: ${d.algorithms.join(', ') || 'nothing'}`);
}

function checkDigest(cfg: KeyringConfig, d: KeyDescription, digest: string | undefined, role: string): Digest {
  if (digest === undefined) throw badRequest(`${role} digest missing for ${d.uri}`);
  if (!isDigest(digest)) throw unsupported(`digest '${digest}' is not supported (use sha224, sha256, sha384 or sha512)`);
  // What the key manager cannot do is said before what the keyring forbids: no setting would help with the former.
  if (!d.digests.includes(digest)) {
    const sha1 = digest === 'sha1' ? ' (SHA-1 is broken for signatures; use SHA-256 or stronger)' : '';
    throw unsupported(`${managerName(cfg)} does not sign with ${digest}${sha1} (key ${keyLabel(d)}); it allows: ${d.digests.join(', ')}`);
  }
  if (digest === 'sha1' && !cfg.allowSha1) {
    throw unsupported(
      `SHA-1 signatures are refused for keyring '${cfg.name}' (${d.uri}): SHA-1 is broken for signatures; use SHA-256 or stronger, or set allow_sha1 = true in [keyrings.${cfg.name}]`,
    );
  }
  if (d.mandatoryDigest && digest !== d.mandatoryDigest) {
    throw unsupported(`key ${keyLabel(d)} signs only with ${d.mandatoryDigest}, not ${digest}`);
  }
  return digest;
}

/**
 * The signatures a grant can repeat: PKCS#1, PSS and ECDSA over a digest of
 * fixed length; Ed25519 (the message itself, of any length) only with a local
 * key or on a PKCS#11 token, which set no message limit (AWS KMS does).
 */
function grantable(req: SignRequest, backendType: string): boolean {
  if (req.algorithm === 'ed25519') return backendType === 'local' || backendType === 'pkcs11';
  return req.digest !== undefined && (req.algorithm === 'rsa-pkcs1' || req.algorithm === 'rsa-pss' || req.algorithm === 'ecdsa');
}

/**
 * The checks of SIGN, and of VERIFY with the same policy (algorithm, digests,
 * SHA-1, lengths), less the limits of the key manager's signing (Ed25519
 * message size, fixed PSS salt) which do not bind a verifier.
 */
function checkSignature(cfg: KeyringConfig, d: KeyDescription, req: SignRequest, op: 'sign' | 'verify'): void {
  const signing = op === 'sign';
  if (!d.algorithms.includes(req.algorithm)) throw wrongAlgorithm(d, req.algorithm);
  if (req.algorithm === 'ed25519') {
    if (req.digest !== undefined) throw badRequest('Ed25519 signs the whole message: no digest may be given');
    if (signing && d.maxMessage !== undefined && req.data.length > d.maxMessage) {
      throw unsupported(`message of ${req.data.length} bytes exceeds the ${d.maxMessage}-byte Ed25519 limit of ${d.uri}'s key manager`);
    }
    return;
  }
  if (req.algorithm === 'rsa-pkcs1' && req.digest === undefined) {
    // Raw type-1 padding (no DigestInfo): the input must fit the padding.
    if (req.data.length > d.bits / 8 - 11) throw badRequest(`input of ${req.data.length} bytes is too long for PKCS#1 padding with ${keyLabel(d)}`);
    return;
  }
  const digest = checkDigest(cfg, d, req.digest, 'signature');
  if (req.data.length !== DIGEST_SIZE[digest]) {
    throw badRequest(`${digest} digest must be ${DIGEST_SIZE[digest]} bytes, got ${req.data.length} (the caller hashes; send only the digest)`);
  }
  if (req.algorithm === 'rsa-pss') {
    const mgf1 = req.mgf1Digest ?? digest;
    if (!isDigest(mgf1)) throw unsupported(`MGF1 digest '${mgf1}' is not supported`);
    const salt = req.saltLength;
    if (salt === undefined) {
      if (signing) throw badRequest('RSA-PSS needs a salt length');
      return; // VERIFY: any salt length
    }
    const max = Math.ceil((d.bits - 1) / 8) - DIGEST_SIZE[digest] - 2;
    if (salt > max) throw badRequest(`PSS salt length ${salt} exceeds the maximum ${max} for ${keyLabel(d)} with ${digest}`);
    if (signing && d.pssSalt === 'digest' && salt !== DIGEST_SIZE[digest]) {
      throw unsupported(`key manager of ${d.uri} fixes the PSS salt length to the digest length (${DIGEST_SIZE[digest]} for ${digest}), not ${salt}`);
    }
  }
}

/** The checks of DECRYPT for its counterpart: same algorithms and policy; the plaintext must fit the padding. */
function checkEncrypt(cfg: KeyringConfig, d: KeyDescription, req: EncryptRequest): void {
  if (req.algorithm === 'rsa-pkcs1-decrypt' && d.algorithms.includes('rsa-pkcs1-decrypt') && !cfg.allowPkcs1Decrypt) {
    throw unsupported(
      `PKCS#1 v1.5 encryption to ${d.uri} is refused: keyring '${cfg.name}' disables its decryption (padding-oracle attacks); use OAEP, or set allow_pkcs1_decrypt = true in [keyrings.${cfg.name}]`,
    );
  }
  if (!d.algorithms.includes(req.algorithm)) throw wrongAlgorithm(d, req.algorithm);
  const k = Math.ceil(d.bits / 8);
  let max: number;
  if (req.algorithm === 'rsa-oaep') {
    for (const g of [req.digest, req.mgf1Digest]) {
      if (g !== undefined && !isDigest(g)) throw unsupported(`OAEP digest '${g}' is not supported (sha1, sha224, sha256, sha384, sha512)`);
    }
    max = k - 2 * DIGEST_SIZE[req.digest ?? 'sha1'] - 2;
  } else {
    max = k - 11;
  }
  if (req.data.length > max) {
    throw badRequest(`plaintext of ${req.data.length} bytes is too long for ${req.algorithm} with ${keyLabel(d)} (at most ${Math.max(max, 0)})`);
  }
}

function checkDecrypt(cfg: KeyringConfig, d: KeyDescription, req: DecryptRequest): void {
  if (req.algorithm === 'rsa-pkcs1-decrypt' && d.algorithms.includes('rsa-pkcs1-decrypt') && !cfg.allowPkcs1Decrypt) {
    throw unsupported(
      `PKCS#1 v1.5 decryption is disabled for keyring '${cfg.name}' (${d.uri}): it is open to padding-oracle attacks; use OAEP, or set allow_pkcs1_decrypt = true in [keyrings.${cfg.name}]`,
    );
  }
  if (!d.algorithms.includes(req.algorithm)) throw wrongAlgorithm(d, req.algorithm);
  if (req.data.length !== Math.ceil(d.bits / 8)) {
    throw badRequest(`ciphertext of ${req.data.length} bytes does not match ${keyLabel(d)} (${Math.ceil(d.bits / 8)} bytes expected)`);
  }
  if (req.algorithm === 'rsa-oaep') {
    // OAEP's digest is not a signature digest: SHA-1 is fine here.
    for (const g of [req.digest, req.mgf1Digest]) {
      if (g !== undefined && !isDigest(g)) throw unsupported(`OAEP digest '${g}' is not supported (sha1, sha224, sha256, sha384, sha512)`);
    }
  }
}
