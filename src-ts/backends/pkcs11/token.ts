/**
 * One PKCS#11 token behind a keyring: the token's slot (found by label, again
 * after the token goes away or the process forks), one login for the whole
 * token, and a pool of sessions no larger than max_sessions and the token's
 * own limit.
 *
 * pkcs11js calls block the thread they run on. The short ones (find, read
 * attributes, login) run on the event loop; signing, decryption, derivation
 * and key generation use the binding's thread-pool variants when the library
 * was initialized for OS locking, so a slow HSM does not stall the agent.
 *
 * A wrong PIN is never tried twice: the token's failed-login counter must not
 * be walked into lockout by retries, and a token that reports the final try
 * is not logged into at all.
 */
import crypto from 'node:crypto';
import type { PKCS11, TokenInfo } from 'pkcs11js';
import { ErrorCode, KmsError } from '../../errors.js';
import * as C from './constants.js';
import { ckrName, ckrOf, countLimit, listTokens, openLibrary, releaseLibrary, slotNumber, tokensSeen, trimmed, type LoadedLibrary } from './library.js';

/** Where the user PIN comes from; read at each login, never kept by the token. */
export interface PinSource {
  /** For messages: `pin_file /etc/…`, `environment variable HSM_PIN`, `pin in the config`. */
  readonly origin: string;
  /** Whether a corrected PIN is seen without restarting (a file is read again; the environment is not). */
  readonly rereadable: boolean;
  read(): string;
}

export interface TokenOptions {
  keyring: string;
  library: string;
  tokenLabel?: string;
  slot?: number;
  maxSessions: number;
  pin?: PinSource;
}

const CKS_RO_USER_FUNCTIONS = 1;
const CKS_RW_USER_FUNCTIONS = 3;

const LOST_SESSION = new Set([C.CKR_SESSION_HANDLE_INVALID, C.CKR_SESSION_CLOSED]);
const LOST_TOKEN = new Set([C.CKR_TOKEN_NOT_PRESENT, C.CKR_DEVICE_REMOVED, C.CKR_SLOT_ID_INVALID, C.CKR_TOKEN_NOT_RECOGNIZED, C.CKR_DEVICE_ERROR]);
const STALE_OBJECT = new Set([C.CKR_KEY_HANDLE_INVALID, C.CKR_OBJECT_HANDLE_INVALID]);

type Recovery = 'session' | 'login' | 'token' | 'library' | 'object' | undefined;

function recoveryFor(err: unknown): Recovery {
  const rv = ckrOf(err);
  if (rv === undefined) return undefined;
  if (LOST_SESSION.has(rv)) return 'session';
  if (rv === C.CKR_USER_NOT_LOGGED_IN) return 'login';
  if (LOST_TOKEN.has(rv)) return 'token';
  if (rv === C.CKR_CRYPTOKI_NOT_INITIALIZED) return 'library';
  if (STALE_OBJECT.has(rv)) return 'object';
  return undefined;
}

// ---- the token ----------------------------------------------------------------

export interface Session {
  readonly lib: PKCS11;
  readonly handle: Buffer;
  readonly slot: Buffer;
  readonly threadSafe: boolean;
  /** Set between an operation's Init and its end: a session left with an operation active is not reused. */
  opActive: boolean;
}

interface Pooled extends Session {
  /** The token generation the session was opened in; a reset makes older ones void. */
  readonly gen: number;
  /** The library epoch it was opened in: after a fork or re-initialization its handle means nothing. */
  readonly epoch: number;
}

interface Waiter {
  give(s: Pooled): void;
  retry(): void;
}

export interface RunOptions {
  /** Log in before `fn` (default); random bytes and doctor's public listing do without. */
  login?: boolean;
  /** Called before a retry because an object handle went stale: forget cached handles. */
  onStaleObject?: () => void;
}

export class Token {
  private library?: LoadedLibrary;
  private libraryEpoch = 0;
  private slot?: Buffer;
  private gen = 0;
  private idle: Pooled[] = [];
  private open = 0;
  private limit: number;
  /** Sessions of max_sessions left to the agent's serving threads (grants, src-native/node/pkcs11_sign.c). */
  private reserved = 0;
  private readonly waiters: Waiter[] = [];
  private loggedIn = false;
  private mechanisms?: Set<number>;
  /** HMAC of the PIN the token rejected, under a key of this process: never the PIN itself. */
  private rejectedPin?: Buffer;
  private rejectedAt?: string;
  private readonly pinKey = crypto.randomBytes(32);
  private closed = false;

  /** onForget: sessions and object handles of this token have become void. */
  constructor(
    readonly opts: TokenOptions,
    private readonly onForget: () => void = () => {},
  ) {
    this.limit = opts.maxSessions;
  }

  /** `token 'prod'` or `token in slot 0`, for messages. */
  get name(): string {
    return this.opts.tokenLabel !== undefined ? `token '${this.opts.tokenLabel}'` : `token in slot ${this.opts.slot}`;
  }

  /** Changes whenever sessions and object handles may have become void (token reset, fork). */
  get generation(): number {
    return this.gen;
  }

  get sessionLimit(): number {
    return this.limit;
  }

  get openSessions(): number {
    return this.open;
  }

  /** How many sessions the pool itself may open: the limit less those left to grants, at least one. */
  private get poolLimit(): number {
    return Math.max(1, this.limit - this.reserved);
  }

  /**
   * Leaves up to `n` sessions of the limit to the agent's serving threads,
   * which keep that many of their own for granted signatures; the pool keeps
   * at least one. Returns how many the threads may use (0: none).
   */
  reserveForGrants(n: number): number {
    const share = Math.min(n, this.limit - 1);
    if (share < 1) return 0;
    this.reserved = Math.max(this.reserved, share);
    return share;
  }

  private where(): string {
    return `[keyrings.${this.opts.keyring}]`;
  }

  /** The library, loaded and initialized for this process; notices a fork or a re-initialization. */
  loadedLibrary(): LoadedLibrary {
    const before = this.library;
    const lib = openLibrary(this.opts.library, this.opts.keyring);
    if (lib !== before) {
      if (before) before.users--;
      lib.users++;
      this.library = lib;
    }
    if (lib.epoch !== this.libraryEpoch) {
      // Sessions of an older epoch died with it (fork, or C_Initialize again): forget them without closing.
      this.forget();
      this.libraryEpoch = lib.epoch;
    }
    return lib;
  }

  /** Drops every session, the login and the slot; waiting callers try again. */
  private forget(): void {
    this.gen++;
    this.idle = [];
    this.open = 0;
    this.loggedIn = false;
    this.slot = undefined;
    this.mechanisms = undefined;
    this.limit = this.opts.maxSessions;
    this.onForget();
    for (const w of this.waiters.splice(0)) w.retry();
  }

  /**
   * After the token went away: close our idle sessions (busy ones are closed
   * as they come back) and find the token again. Not C_CloseAllSessions: other
   * keyrings on the same token keep theirs.
   */
  private reset(): void {
    for (const s of this.idle) closeQuietly(s);
    this.forget();
  }

  private findSlot(lib: PKCS11): Buffer {
    const seen = () => listTokens(tokensSeen(lib));
    const slots: Buffer[] = lib.C_GetSlotList(true);
    let found: Buffer[];
    if (this.opts.tokenLabel !== undefined) {
      found = slots.filter((s) => {
        try {
          return trimmed(lib.C_GetTokenInfo(s).label) === this.opts.tokenLabel;
        } catch {
          return false;
        }
      });
      if (found.length > 1) {
        throw new KmsError(
          ErrorCode.BACKEND_UNAVAILABLE,
          `${found.length} tokens are labelled '${this.opts.tokenLabel}' (library ${this.opts.library}): ${seen()}; give each a unique label, or use slot = <n> in ${this.where()}`,
        );
      }
    } else {
      found = slots.filter((s) => slotNumber(s) === this.opts.slot);
    }
    const slot = found[0];
    if (!slot) {
      const key = this.opts.tokenLabel !== undefined ? 'token_label' : 'slot';
      throw new KmsError(
        ErrorCode.BACKEND_UNAVAILABLE,
        `${this.name} of keyring '${this.opts.keyring}' not found through library ${this.opts.library}; tokens seen: ${seen()}; check ${key} in ${this.where()} (the list also comes from: kmsbridge doctor, or pkcs11-tool --module ${this.opts.library} --list-slots)`,
      );
    }
    const ti = lib.C_GetTokenInfo(slot);
    if (!(ti.flags & C.CKF_TOKEN_INITIALIZED)) {
      throw new KmsError(
        ErrorCode.BACKEND_UNAVAILABLE,
        `${this.name} (slot ${slotNumber(slot)}) is not initialized; initialize it with the token's tools first`,
      );
    }
    const tokenMax = [countLimit(ti.maxSessionCount), countLimit(ti.maxRwSessionCount)].filter((n): n is number => n !== undefined);
    this.limit = Math.max(1, Math.min(this.opts.maxSessions, ...tokenMax));
    return slot;
  }

  /** The library and the token's slot, found (again) if need be. */
  private ready(): { lib: LoadedLibrary; slot: Buffer } {
    if (this.closed) throw new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `keyring '${this.opts.keyring}' is closed`);
    const lib = this.loadedLibrary();
    this.slot ??= this.findSlot(lib.lib);
    return { lib, slot: this.slot };
  }

  private async acquire(signal: AbortSignal): Promise<Pooled> {
    for (;;) {
      if (signal.aborted) throw this.busy();
      const { lib, slot } = this.ready();
      const s = this.idle.pop();
      if (s) return s;
      if (this.open < this.poolLimit) {
        const opened = this.openSession(lib, slot);
        if (opened) return opened;
      }
      const got = await this.wait(signal);
      if (got) return got;
    }
  }

  /** A new session; undefined when the token says it has no more (the pool then waits for one of ours). */
  private openSession(lib: LoadedLibrary, slot: Buffer): Pooled | undefined {
    this.open++;
    try {
      const handle = lib.lib.C_OpenSession(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION);
      return { lib: lib.lib, handle, slot, threadSafe: lib.threadSafe, gen: this.gen, epoch: lib.epoch, opActive: false };
    } catch (err) {
      this.open--;
      if (ckrOf(err) === C.CKR_SESSION_COUNT) {
        if (this.open > 0) {
          this.limit = this.open; // the token's real limit (other applications hold the rest)
          return undefined;
        }
        throw new KmsError(
          ErrorCode.BACKEND_UNAVAILABLE,
          `${this.name} refuses to open a session (CKR_SESSION_COUNT): its session limit is reached by other applications; close some of them, or raise the limit in the HSM's configuration`,
        );
      }
      if (recoveryFor(err) === 'token') this.reset();
      throw err;
    }
  }

  private busy(): KmsError {
    return new KmsError(
      ErrorCode.TIMEOUT,
      `all ${this.limit} sessions to ${this.name} stayed busy (session limit reached); raise max_sessions in ${this.where()} if the token allows more`,
    );
  }

  private wait(signal: AbortSignal): Promise<Pooled | undefined> {
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(this.busy());
      };
      const w: Waiter = {
        give: (s) => {
          signal.removeEventListener('abort', onAbort);
          resolve(s);
        },
        retry: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(undefined);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
    });
  }

  private release(s: Pooled, broken: boolean): void {
    if (this.closed) {
      closeQuietly(s);
      return;
    }
    if (s.gen === this.gen) {
      if (!broken && this.open > this.poolLimit) broken = true; // the pool shrank for grants: close, do not keep
      if (!broken) {
        const w = this.waiters.shift();
        if (w) w.give(s);
        else this.idle.push(s);
        return;
      }
      closeQuietly(s);
      this.open--;
      // Closing an application's last session logs it out of the token (PKCS#11 §5.6, C_CloseSession).
      if (this.open === 0) this.loggedIn = false;
    } else if (s.epoch === this.libraryEpoch) {
      closeQuietly(s); // busy while the token was reset; a handle from before a fork is not ours to close
    }
    this.waiters.shift()?.retry(); // room for a new session
  }

  /**
   * Runs `fn` with a session of its own. A lost session, a lost login, a token
   * that went away and came back, or a stale object handle is recovered once.
   */
  async run<T>(signal: AbortSignal, fn: (s: Session) => T | Promise<T>, opts: RunOptions = {}): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const s = await this.acquire(signal);
      let broken = false;
      try {
        if (opts.login !== false) this.login(s);
        return await fn(s);
      } catch (err) {
        const recovery = err instanceof KmsError ? undefined : recoveryFor(err);
        // A PKCS#11 failure, or an operation left half-way, may leave state on the session: the next caller gets a fresh one.
        broken = !(err instanceof KmsError) || s.opActive;
        if (recovery === 'login') this.loggedIn = false;
        else if (recovery === 'token') this.reset();
        else if (recovery === 'library') this.reinitialize();
        else if (recovery === 'object') opts.onStaleObject?.();
        if (recovery === undefined || attempt > 0 || signal.aborted) throw err;
      } finally {
        this.release(s, broken);
      }
    }
  }

  private reinitialize(): void {
    const lib = this.library;
    if (lib) {
      try {
        lib.lib.C_Initialize({ flags: lib.threadSafe ? C.CKF_OS_LOCKING_OK : 0 });
      } catch {
        /* already initialized again by another keyring */
      }
    }
    this.forget();
  }

  // ---- login ------------------------------------------------------------------

  private pinCheck(pin: string): Buffer {
    return crypto.createHmac('sha256', this.pinKey).update(pin, 'utf8').digest();
  }

  private lockedError(): KmsError {
    return new KmsError(
      ErrorCode.ACCESS_DENIED,
      `the user PIN of ${this.name} is locked (too many wrong PINs); kmsbridge did not try to log in. The token's security officer must unlock it (C_InitPIN, e.g. pkcs11-tool --init-pin --login --login-type so, or the HSM vendor's tool)`,
    );
  }

  /** Refuses to log in where a wrong PIN would lock the token, or where the PIN is known to be wrong. */
  private checkBeforeLogin(ti: TokenInfo, pin: string): Buffer {
    if (ti.flags & C.CKF_USER_PIN_LOCKED) throw this.lockedError();
    if (ti.flags & C.CKF_USER_PIN_FINAL_TRY) {
      throw new KmsError(
        ErrorCode.ACCESS_DENIED,
        `${this.name} reports that one more wrong PIN locks it (CKF_USER_PIN_FINAL_TRY), so kmsbridge will not log in; check ${this.opts.pin!.origin}, then log in once by hand with the right PIN (pkcs11-tool --module ${this.opts.library} --login --test) to reset the token's counter`,
      );
    }
    const check = this.pinCheck(pin);
    if (this.rejectedPin?.equals(check)) {
      const fix = this.opts.pin!.rereadable
        ? `correct ${this.opts.pin!.origin} (it is read again at the next request)`
        : `correct ${this.opts.pin!.origin} and restart the agent`;
      throw new KmsError(
        ErrorCode.ACCESS_DENIED,
        `${this.name} rejected the PIN from ${this.opts.pin!.origin} at ${this.rejectedAt}; kmsbridge does not try a rejected PIN again, so the token's failed-login counter is not walked toward lockout: ${fix}`,
      );
    }
    return check;
  }

  /** Logs the application into the token once (the login holds for every session). Synchronous, so concurrent callers cannot both try a PIN. */
  private login(s: Session): void {
    if (this.loggedIn) return;
    const ti = s.lib.C_GetTokenInfo(s.slot);
    if (!(ti.flags & C.CKF_LOGIN_REQUIRED)) {
      this.loggedIn = true;
      return;
    }
    this.userLogin(s, ti, C.CKU_USER);
    this.loggedIn = true;
  }

  /**
   * Whether the session really is logged in. A token that forgot the login
   * (closed sessions behind our back) hides private objects instead of
   * failing, so a search that found nothing asks here before saying so;
   * logs in again (once) when the login was lost.
   */
  confirmLogin(s: Session): void {
    const state = s.lib.C_GetSessionInfo(s.handle).state;
    if (state === CKS_RO_USER_FUNCTIONS || state === CKS_RW_USER_FUNCTIONS) return;
    if (!(s.lib.C_GetTokenInfo(s.slot).flags & C.CKF_LOGIN_REQUIRED)) return;
    this.loggedIn = false;
    this.login(s);
  }

  /** The PIN again for a key with CKA_ALWAYS_AUTHENTICATE, right after the operation's Init. */
  contextLogin(s: Session): void {
    this.userLogin(s, s.lib.C_GetTokenInfo(s.slot), C.CKU_CONTEXT_SPECIFIC);
  }

  private userLogin(s: Session, ti: TokenInfo, userType: number): void {
    if (!this.opts.pin) {
      throw new KmsError(ErrorCode.ACCESS_DENIED, `${this.name} requires a login: set pin_env or pin_file in ${this.where()}`);
    }
    const pin = this.opts.pin.read();
    const check = this.checkBeforeLogin(ti, pin);
    try {
      s.lib.C_Login(s.handle, userType, pin);
    } catch (err) {
      const rv = ckrOf(err);
      if (rv === C.CKR_USER_ALREADY_LOGGED_IN && userType === C.CKU_USER) return;
      if (rv === C.CKR_PIN_INCORRECT || rv === C.CKR_PIN_INVALID || rv === C.CKR_PIN_LEN_RANGE) {
        this.rejectedPin = check;
        this.rejectedAt = new Date().toISOString();
        const fix = this.opts.pin.rereadable
          ? `correct ${this.opts.pin.origin}; it is read again at the next request`
          : `correct ${this.opts.pin.origin} and restart the agent`;
        throw new KmsError(
          ErrorCode.ACCESS_DENIED,
          `${this.name} rejected the PIN from ${this.opts.pin.origin} (${ckrName(err)}); kmsbridge will not try this PIN again, so the token is not walked toward lockout: ${fix}`,
        );
      }
      if (rv === C.CKR_PIN_LOCKED) throw this.lockedError();
      if (rv === C.CKR_PIN_EXPIRED) {
        throw new KmsError(
          ErrorCode.ACCESS_DENIED,
          `the user PIN of ${this.name} has expired; set a new one (pkcs11-tool --change-pin, or the HSM vendor's tool) and update ${this.opts.pin.origin}`,
        );
      }
      if (rv === C.CKR_USER_PIN_NOT_INITIALIZED) {
        throw new KmsError(
          ErrorCode.ACCESS_DENIED,
          `${this.name} has no user PIN yet; set one with the token's tools (softhsm2-util --init-token, pkcs11-tool --init-pin)`,
        );
      }
      throw err;
    }
    this.rejectedPin = undefined;
  }

  // ---- what the token offers ----------------------------------------------------

  mechanismsOf(s: Session): Set<number> {
    this.mechanisms ??= new Set(s.lib.C_GetMechanismList(s.slot));
    return this.mechanisms;
  }

  /** The PKCS#11 flags of the user PIN, for doctor and messages. */
  pinStatus(s: Session): string[] {
    const f = s.lib.C_GetTokenInfo(s.slot).flags;
    const out: string[] = [];
    if (f & C.CKF_USER_PIN_LOCKED) out.push('locked');
    if (f & C.CKF_USER_PIN_FINAL_TRY) out.push('final try');
    if (f & C.CKF_USER_PIN_COUNT_LOW) out.push('count low (a login failed since the last success)');
    if (f & C.CKF_USER_PIN_TO_BE_CHANGED) out.push('to be changed');
    if (!(f & C.CKF_USER_PIN_INITIALIZED)) out.push('not initialized');
    return out;
  }

  /** finalize false: leave the library initialized and loaded (a thread may still be inside it). */
  async close(opts: { finalize: boolean } = { finalize: true }): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const lib = this.library;
    for (const s of this.idle) closeQuietly(s);
    this.idle = [];
    this.open = 0;
    for (const w of this.waiters.splice(0)) w.retry();
    if (lib) {
      this.library = undefined;
      releaseLibrary(lib, opts.finalize);
    }
  }
}

function closeQuietly(s: Session): void {
  try {
    s.lib.C_CloseSession(s.handle);
  } catch {
    /* already gone with its token */
  }
}
