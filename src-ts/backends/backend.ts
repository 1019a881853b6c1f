import fs from 'node:fs';
import type { NativeKeyHandle, NativePkcs11Grant } from '../native.js';
import type { DecryptRequest, EncryptRequest, KeyDescription, KeySpec, KeySummary, SignRequest, VerifyRequest } from '../types.js';

/**
 * What a backend reports for a key; the KeyService adds the URI. source: the file it was read from, where a file
 * replaced under the same key id changes the key (local keys); the description holds while that file does.
 */
export type BackendKeyDescription = Omit<KeyDescription, 'uri'> & { source?: FileIdentity };
export type BackendKeySummary = Omit<KeySummary, 'uri'> & { keyId: string };

/** Progress of long work (RSA-4096 generation), for a terminal. */
export type Progress = (message: string) => void;

/** A key file as it was when a key was read from it (what `stat` said). */
export interface FileIdentity {
  file: string;
  ino: number;
  mtimeMs: number;
  size: number;
}

/** What `stat` says of file now; undefined if it is gone. */
export function fileIdentity(file: string): FileIdentity | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return undefined;
  }
  return { file, ino: st.ino, mtimeMs: st.mtimeMs, size: st.size };
}

/** Whether the file is still the one read as `was`. */
export function fileUnchanged(was: FileIdentity, now: FileIdentity | undefined = fileIdentity(was.file)): boolean {
  return now !== undefined && now.ino === was.ino && now.mtimeMs === was.mtimeMs && now.size === was.size;
}

/**
 * What the fast path needs to run an approved signature without the
 * KeyService (src-native/node/grants.c): a local key, loaded, and the file it
 * came from, so that a replaced or deleted file ends the grant; or a key on a
 * PKCS#11 token, which only the agent's serving threads use.
 */
export type BackendGrant = LocalGrant | Pkcs11Grant;

export interface LocalGrant extends FileIdentity {
  key: NativeKeyHandle;
}

export interface GrantOptions {
  /** How many of the agent's serving threads may sign on a token at once; 0: no token grants (in-process callers). */
  tokenThreads: number;
}

export interface Pkcs11Grant {
  /** maxInside: at most the sessions of max_sessions the token left to the threads. */
  pkcs11: NativePkcs11Grant;
  /** False once the handle may have gone stale (token reset, delete, close): checked just before the grant is made. */
  stillValid(): boolean;
}

let waitingProbe: () => boolean = () => false;

/**
 * Whether requests are waiting for this thread beyond the ones being served.
 * The agent installs a probe over its connections; elsewhere nobody waits.
 * Backends that can work either on the event loop or on libuv's pool use it
 * to choose.
 */
export function othersWaiting(): boolean {
  return waitingProbe();
}

/** Private-key operations on this thread that have started and not finished. */
let privateOpsInFlight = 0;
/** When one last found others in flight or waiting (performance.now()). */
let lastContended = -Infinity;
/** How long after contention costly operations keep going to the pool: a burst's requests do not all arrive together. */
const CONTENTION_MEMORY_MS = 50;

/** Brackets a private-key operation for mayRunInline(). */
export function privateOpStarted(): void {
  privateOpsInFlight++;
}
export function privateOpEnded(): void {
  privateOpsInFlight--;
}

/**
 * Whether an operation costly enough to matter (RSA) may run on this
 * thread's event loop now: nothing else in flight beyond the caller's own
 * |own| operations, no request waiting, and no contention for a while. Under
 * load such operations go to libuv's pool, so that one agent uses every core.
 */
export function mayRunInline(own: number): boolean {
  const now = performance.now();
  if (privateOpsInFlight > own || othersWaiting()) {
    lastContended = now;
    return false;
  }
  return now - lastContended > CONTENTION_MEMORY_MS;
}

/** Installs the probe behind othersWaiting(); returns a function that removes it again. */
export function setWaitingProbe(probe: () => boolean): () => void {
  waitingProbe = probe;
  return () => {
    if (waitingProbe === probe) waitingProbe = () => false;
  };
}

/**
 * A key manager behind a keyring. Implementations hold the credentials and
 * the private keys; they check nothing the KeyService already checked
 * (algorithm allowed, digest length, SHA-1 policy) but enforce their own
 * limits and report them through describe().
 *
 * Every method may be called concurrently and must be bounded by `signal`
 * where it waits on something outside the process.
 */
export interface Backend {
  readonly type: string;
  /** Where the key manager is, for messages ('https://kms.eu-west-1.amazonaws.com', a PKCS#11 library); absent for the local store. */
  readonly location?: string;
  /**
   * True where another program may replace a key under the same key id without a trace the KeyService can check
   * (a token's object deleted and made anew with its label): describe() then asks the backend each time, which
   * reads the key afresh. Local keys say where they were read from instead (source); AWS KMS key material never changes.
   */
  readonly replaceableKeys?: boolean;
  describe(keyId: string, signal: AbortSignal): Promise<BackendKeyDescription>;
  sign(keyId: string, req: SignRequest, signal: AbortSignal): Promise<Buffer>;
  decrypt(keyId: string, req: DecryptRequest, signal: AbortSignal): Promise<Buffer>;
  /**
   * Public-key operations by the key manager itself (AWS KMS Verify/Encrypt).
   * Optional: without them the KeyService does them with the key's public
   * key. verify resolves false for a signature that does not verify.
   */
  verify?(keyId: string, req: VerifyRequest, signal: AbortSignal): Promise<boolean>;
  encrypt?(keyId: string, req: EncryptRequest, signal: AbortSignal): Promise<Buffer>;
  derive(keyId: string, peerSpki: Buffer, signal: AbortSignal): Promise<Buffer>;
  random(length: number, signal: AbortSignal): Promise<Buffer>;
  /**
   * Backends whose keys this process can use without the KeyService offer grants: the local store
   * (its keys live here), PKCS#11 (the token this process logged in to). Undefined: not this one.
   */
  grant?(keyId: string, req: SignRequest, signal: AbortSignal, opts: GrantOptions): Promise<BackendGrant | undefined>;
  create(name: string, spec: KeySpec, signal: AbortSignal, progress?: Progress): Promise<{ keyId: string }>;
  list(signal: AbortSignal): Promise<BackendKeySummary[]>;
  delete(keyId: string, signal: AbortSignal): Promise<void>;
  /** One line for `kmsbridge keys` output: how this keyring protects its keys. */
  protectionSummary(): Promise<string>;
  close(): Promise<void>;
}
