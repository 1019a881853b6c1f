/**
 * The PKCS#11 library of a keyring, loaded through pkcs11js and initialized
 * once per process (again in a forked child, as PKCS#11 requires), shared by
 * every keyring that names the same file; and small readers for what the
 * binding returns (CK_RV of an error, CK_ULONGs, slots and their tokens).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { PKCS11 } from 'pkcs11js';
import { ErrorCode, KmsError } from '../../errors.js';
import * as C from './constants.js';

// ---- errors from the binding --------------------------------------------------

/** The CK_RV of a pkcs11js error, if it is one. */
export function ckrOf(err: unknown): number | undefined {
  if (err instanceof Error && err.name === 'Pkcs11Error') {
    const code = (err as Error & { code?: unknown }).code;
    if (typeof code === 'number') return code;
  }
  return undefined;
}

/** `CKR_PIN_INCORRECT` for a pkcs11js error, else the error's message. */
export function ckrName(err: unknown): string {
  if (ckrOf(err) !== undefined) return (err as Error).message;
  return err instanceof Error ? err.message : String(err);
}

// ---- the library, once per process ------------------------------------------------

type Binding = typeof import('pkcs11js');

let binding: Binding | undefined;

function loadBinding(): Binding {
  if (binding) return binding;
  try {
    // Loaded on first use, so a build without the native binding still serves local and cloud keyrings.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    binding = require('pkcs11js') as Binding;
    return binding;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const fix =
      e.code === 'MODULE_NOT_FOUND'
        ? `it is not installed (npm leaves this optional dependency out when its build fails, most often because node-gyp could not download Node's headers): install it again with this node's own headers: npm_config_nodedir=${path.resolve(path.dirname(process.execPath), '..')} npm install`
        : 'it is an optional dependency built by its own install script: run npm install-scripts approve pkcs11js && npm rebuild pkcs11js';
    throw new KmsError(
      ErrorCode.BACKEND_UNAVAILABLE,
      `the PKCS#11 binding (pkcs11js) cannot be loaded: ${e.message.split('\n')[0]}; ${fix} (needs make, g++ and python3)`,
    );
  }
}

export interface LoadedLibrary {
  readonly path: string;
  readonly lib: PKCS11;
  /** Initialized with CKF_OS_LOCKING_OK: sessions may be used from several threads at once. */
  readonly threadSafe: boolean;
  /** The process that initialized it: a forked child must initialize again. */
  readonly pid: number;
  /** Bumped at every (re)initialization; sessions and handles of an older epoch are gone. */
  readonly epoch: number;
  readonly ownsInit: boolean;
  users: number;
}

const libraries = new Map<string, LoadedLibrary>();
let epochs = 0;

function initialize(lib: PKCS11, file: string): { threadSafe: boolean; ownsInit: boolean } {
  try {
    lib.C_Initialize({ flags: C.CKF_OS_LOCKING_OK });
    return { threadSafe: true, ownsInit: true };
  } catch (err) {
    const rv = ckrOf(err);
    // Someone else in this process (another copy of the binding) initialized it: share, do not finalize.
    if (rv === C.CKR_CRYPTOKI_ALREADY_INITIALIZED) return { threadSafe: false, ownsInit: false };
    if (rv !== C.CKR_CANT_LOCK) {
      throw new KmsError(
        ErrorCode.BACKEND_UNAVAILABLE,
        `PKCS#11 library ${file} failed to initialize (${ckrName(err)}); check its own configuration (for SoftHSM2: SOFTHSM2_CONF and its token directory; for an HSM client: its config file and connection to the HSM)`,
      );
    }
  }
  // A library that cannot use OS locking: initialize without threads and keep every call on the event loop.
  try {
    lib.C_Initialize();
    return { threadSafe: false, ownsInit: true };
  } catch (err) {
    throw new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `PKCS#11 library ${file} failed to initialize (${ckrName(err)}); check its own configuration`);
  }
}

/** The loaded, initialized library at `file`, shared by every keyring of this process that uses it. */
export function openLibrary(file: string, keyring: string): LoadedLibrary {
  const known = libraries.get(file);
  if (known && known.pid === process.pid) return known;
  if (known) {
    // Forked: the parent's sessions and login mean nothing here. PKCS#11 requires C_Initialize again.
    libraries.delete(file);
    try {
      known.lib.C_Finalize();
    } catch {
      /* the child's copy of the library state may already be unusable */
    }
    const again = initialize(known.lib, file);
    const lib: LoadedLibrary = { ...known, ...again, pid: process.pid, epoch: ++epochs, users: 0 };
    libraries.set(file, lib);
    return lib;
  }
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch {
    throw new KmsError(
      ErrorCode.BACKEND_UNAVAILABLE,
      `PKCS#11 library ${file} of keyring '${keyring}' ${fs.existsSync(file) ? 'cannot be read by this user' : 'does not exist'}; check library in [keyrings.${keyring}] (SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so; an HSM vendor's client package names its own)`,
    );
  }
  const { PKCS11: Pkcs11 } = loadBinding();
  const lib = new Pkcs11();
  try {
    lib.load(file);
  } catch (err) {
    throw new KmsError(
      ErrorCode.BACKEND_UNAVAILABLE,
      `PKCS#11 library ${file} of keyring '${keyring}' cannot be loaded: ${(err as Error).message.split('\n')[0]}; check that it is a PKCS#11 module for this machine's architecture and that its own dependencies are installed (ldd ${file})`,
    );
  }
  const init = initialize(lib, file);
  const loaded: LoadedLibrary = { path: file, lib, ...init, pid: process.pid, epoch: ++epochs, users: 0 };
  libraries.set(file, loaded);
  return loaded;
}

export function releaseLibrary(l: LoadedLibrary, finalize = true): void {
  l.users--;
  if (l.users > 0 || libraries.get(l.path) !== l) return;
  libraries.delete(l.path);
  if (!finalize) return;
  try {
    if (l.ownsInit && l.pid === process.pid) l.lib.C_Finalize();
    l.lib.close();
  } catch {
    /* closing is best effort */
  }
}

// ---- small readers ---------------------------------------------------------------

/** A CK_ULONG as pkcs11js returns it (a number, a bigint or a little-endian buffer). */
export function ulong(v: number | bigint | Buffer): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  if (v.length >= 8) return Number(v.readBigUInt64LE(0) & BigInt(Number.MAX_SAFE_INTEGER));
  if (v.length >= 4) return v.readUInt32LE(0);
  return v.length > 0 ? v[0]! : 0;
}

/** A session or token count limit: 0 and CK_UNAVAILABLE_INFORMATION mean "no limit known". */
export function countLimit(v: number | bigint): number | undefined {
  const n = ulong(v);
  return n > 0 && n < 0xffffffff ? n : undefined;
}

export const trimmed = (s: string): string => s.replace(/[\s\0]+$/, '');

export function slotNumber(slot: Buffer): number {
  return ulong(slot);
}

export interface TokenSeen {
  slot: number;
  initialized: boolean;
  label: string;
  serial: string;
  model: string;
  manufacturer: string;
}

/** Every slot with a token, for messages and `kmsbridge doctor`. */
export function tokensSeen(lib: PKCS11): TokenSeen[] {
  const out: TokenSeen[] = [];
  for (const slot of lib.C_GetSlotList(true)) {
    try {
      const ti = lib.C_GetTokenInfo(slot);
      out.push({
        slot: slotNumber(slot),
        initialized: (ti.flags & C.CKF_TOKEN_INITIALIZED) !== 0,
        label: trimmed(ti.label),
        serial: trimmed(ti.serialNumber),
        model: trimmed(ti.model),
        manufacturer: trimmed(ti.manufacturerID),
      });
    } catch {
      /* a slot that cannot be read is not a candidate */
    }
  }
  return out;
}

export function listTokens(seen: TokenSeen[]): string {
  if (seen.length === 0) return 'none (no slot has a token; for SoftHSM2 create one with softhsm2-util --init-token)';
  return seen
    .map((t) => (t.initialized ? `'${t.label}' (slot ${t.slot}, serial ${t.serial || '-'}, ${t.model || 'token'})` : `an uninitialized token (slot ${t.slot})`))
    .join(', ');
}
