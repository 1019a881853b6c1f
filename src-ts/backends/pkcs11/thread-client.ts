/**
 * A PKCS#11 keyring as the KeyService sees it: the backend itself
 * (pkcs11.ts) runs on a token thread (thread-host.ts), one worker per PKCS#11
 * library, shared by every keyring that uses that library, as a library is
 * initialized once per process. Keyrings of different libraries (an HSM's
 * client and a TPM's, say) do not wait for each other.
 *
 * Why a thread of its own: most PKCS#11 calls are synchronous (pkcs11js has
 * no asynchronous C_SignInit, C_FindObjects, C_OpenSession or C_Login), and
 * a token that stops answering blocks the thread that calls it. Made from
 * the agent's event loop, such a call stopped the whole agent: no HELLO for
 * new connections, no local keys, not even the keyring's own timeout
 * (SoftHSM2 blocked on its file lock showed it). Here a hung token holds the
 * token thread and the calls queued behind it, which the KeyService's timeout
 * answers; everything else goes on.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SHARE_ENV, Worker } from 'node:worker_threads';
import { ErrorCode, KmsError } from '../../errors.js';
import type { KeyringConfig } from '../../config.js';
import type { DecryptRequest, KeySpec, SignRequest } from '../../types.js';
import type { Backend, BackendKeyDescription, BackendKeySummary, GrantOptions, Pkcs11Grant, Progress } from '../backend.js';
import type { Pkcs11Report } from './report.js';
import { settingsOf } from './settings.js';

export type Method = 'describe' | 'sign' | 'decrypt' | 'derive' | 'random' | 'grant' | 'create' | 'list' | 'delete' | 'protectionSummary' | 'doctor' | 'close';

export type Request =
  | { t: 'open'; ring: string; cfg: KeyringConfig; voided: SharedArrayBuffer }
  | { t: 'call'; id: number; ring: string; method: Method; args: unknown[] }
  | { t: 'abort'; id: number };

export interface SerializedError {
  code: ErrorCode;
  message: string;
}

export type Reply =
  { t: 'result'; id: number; value: unknown } | { t: 'error'; id: number; error: SerializedError } | { t: 'progress'; id: number; message: string };

/** Buffers cross threads as plain Uint8Arrays: made Buffers again (the bytes are not copied). */
export function asBuffers(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v)) return v.map(asBuffers);
  if (v !== null && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, asBuffers(x)]));
  }
  return v;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  progress?: Progress;
}

class TokenThread {
  readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  /** Calls whose callers gave up (their timeout) and that the thread has not answered yet: it is stuck in the library. */
  readonly abandoned = new Set<number>();
  private nextId = 1;
  dead = false;

  constructor() {
    this.worker = new Worker(path.join(__dirname, 'thread-host.js'), { env: SHARE_ENV });
    this.worker.unref(); // an idle token thread keeps no process alive
    this.worker.on('message', (r: Reply) => this.onReply(r));
    const gone = (why: string) => {
      this.dead = true;
      this.abandoned.clear();
      for (const p of this.pending.values())
        p.reject(new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `the PKCS#11 token thread ${why}; the next request starts a new one`));
      this.pending.clear();
    };
    this.worker.on('error', (err) => gone(`failed: ${err.message}`));
    this.worker.on('exit', (code) => gone(`exited (${code})`));
  }

  private onReply(r: Reply): void {
    if (r.t !== 'progress') this.abandoned.delete(r.id);
    const p = this.pending.get(r.id);
    if (!p) return; // answered after its caller gave up
    if (r.t === 'progress') return p.progress?.(r.message);
    this.settle(r.id);
    if (r.t === 'result') p.resolve(asBuffers(r.value));
    else p.reject(new KmsError(r.error.code, r.error.message));
  }

  private settle(id: number): void {
    this.pending.delete(id);
    if (this.pending.size === 0) this.worker.unref();
  }

  open(ring: string, cfg: KeyringConfig, voided: SharedArrayBuffer): void {
    this.worker.postMessage({ t: 'open', ring, cfg, voided } satisfies Request);
  }

  /** |what| names the library and keyring for a caller that gave up. */
  call(ring: string, what: string, method: Method, args: unknown[], signal?: AbortSignal, progress?: Progress): Promise<unknown> {
    // What a caller that gave up is told (the KeyService says its own timeout first)
    const late = () => new KmsError(ErrorCode.TIMEOUT, `${what} did not answer ${method} in time; check the token and its library`);
    if (signal?.aborted) return Promise.reject(late());
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (this.pending.size === 0) this.worker.ref(); // a caller waits for it
      this.pending.set(id, { resolve, reject, progress });
      this.worker.postMessage({ t: 'call', id, ring, method, args } satisfies Request);
      // The caller's abort answers it at once, even while the token thread is stuck in the library.
      signal?.addEventListener(
        'abort',
        () => {
          if (!this.pending.has(id)) return;
          this.settle(id);
          this.abandoned.add(id);
          this.worker.postMessage({ t: 'abort', id } satisfies Request);
          reject(late());
        },
        { once: true },
      );
    });
  }
}

/** The token threads, by the real path of the library each one hosts. */
const threads = new Map<string, TokenThread>();
let rings = 0;

/** The file itself, so that two names of one library share its thread (and its one C_Initialize). */
function realLibrary(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return file; // missing or unreadable: the token thread says so by name
  }
}

/**
 * Whether a token thread is inside a library call that has not returned
 * (a hung token). Node's exit would wait for it forever: the CLI then leaves
 * with native().exitStuck().
 */
export function tokenThreadStuck(): boolean {
  for (const t of threads.values()) if (!t.dead && t.abandoned.size > 0) return true;
  return false;
}

export class TokenThreadBackend implements Backend {
  readonly type = 'pkcs11';
  readonly replaceableKeys = true;
  /** The library, named in timeout messages. */
  readonly location: string;
  private readonly ring: string;
  /** Which token thread: the library's real path. */
  private readonly library: string;
  private readonly voided = new Int32Array(new SharedArrayBuffer(4));
  private thread: TokenThread | undefined;

  constructor(private readonly cfg: KeyringConfig) {
    this.location = settingsOf(cfg).library; // a bad config fails here, as it always did
    this.ring = `${cfg.name}#${++rings}`;
    this.library = realLibrary(this.location);
  }

  private call<T>(method: Method, args: unknown[], signal?: AbortSignal, progress?: Progress): Promise<T> {
    let current = threads.get(this.library);
    if (!current || current.dead) {
      current = new TokenThread();
      threads.set(this.library, current);
    }
    if (this.thread !== current) {
      this.thread = current;
      this.thread.open(this.ring, this.cfg, this.voided.buffer as SharedArrayBuffer);
    }
    const what = `the PKCS#11 library ${this.location} (keyring '${this.cfg.name}')`;
    return this.thread.call(this.ring, what, method, args, signal, progress) as Promise<T>;
  }

  describe(keyId: string, signal: AbortSignal): Promise<BackendKeyDescription> {
    return this.call('describe', [keyId], signal);
  }
  sign(keyId: string, req: SignRequest, signal: AbortSignal): Promise<Buffer> {
    return this.call('sign', [keyId, req], signal);
  }
  decrypt(keyId: string, req: DecryptRequest, signal: AbortSignal): Promise<Buffer> {
    return this.call('decrypt', [keyId, req], signal);
  }
  derive(keyId: string, peerSpki: Buffer, signal: AbortSignal): Promise<Buffer> {
    return this.call('derive', [keyId, peerSpki], signal);
  }
  random(length: number, signal: AbortSignal): Promise<Buffer> {
    return this.call('random', [length], signal);
  }
  async grant(keyId: string, req: SignRequest, signal: AbortSignal, opts: GrantOptions): Promise<Pkcs11Grant | undefined> {
    const g = await this.call<{ pkcs11: Pkcs11Grant['pkcs11']; voided: number } | undefined>('grant', [keyId, req, opts], signal);
    return g && { pkcs11: g.pkcs11, stillValid: () => Atomics.load(this.voided, 0) === g.voided };
  }
  create(name: string, spec: KeySpec, signal: AbortSignal, progress?: Progress): Promise<{ keyId: string }> {
    return this.call('create', [name, spec], signal, progress);
  }
  list(signal: AbortSignal): Promise<BackendKeySummary[]> {
    return this.call('list', [], signal);
  }
  delete(keyId: string, signal: AbortSignal): Promise<void> {
    return this.call('delete', [keyId], signal);
  }
  protectionSummary(): Promise<string> {
    return this.call('protectionSummary', [], AbortSignal.timeout(this.cfg.timeoutMs));
  }
  /** `kmsbridge doctor`'s report of the library, its slots and this keyring's token. */
  doctor(signal: AbortSignal, opts: { login: boolean }): Promise<Pkcs11Report> {
    return this.call('doctor', [opts], signal);
  }
  async close(): Promise<void> {
    if (!this.thread || this.thread.dead) return;
    // A call given up on and still unanswered: the library hangs, and the close would queue behind it.
    const stuck = this.thread.abandoned.size > 0;
    // Bounded like every call: a token that hangs must not hold the agent's exit.
    await this.call('close', [], AbortSignal.timeout(stuck ? 1 : this.cfg.timeoutMs)).catch((err: unknown) => {
      if (!(err instanceof KmsError && err.code === ErrorCode.TIMEOUT)) throw err;
    });
  }
}
