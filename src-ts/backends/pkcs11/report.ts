/**
 * What `kmsbridge doctor` shows of a PKCS#11 keyring, gathered like
 * pkcs11-tool --list-slots and --list-objects: the library, every slot and
 * token, and the objects on the keyring's token with their access flags.
 */
import * as C from './constants.js';
import { attributes, className, findObjects, flag, keyIdsFor, kindName, number, privateKeys } from './objects.js';
import { slotNumber, tokensSeen, trimmed, type LoadedLibrary, type TokenSeen } from './library.js';
import type { Session } from './token.js';

export interface Pkcs11SlotReport {
  slot: number;
  description: string;
  token?: TokenSeen & { flags: string[] };
}

export interface Pkcs11ObjectReport {
  class: string;
  label: string;
  id: string;
  /** `rsa-2048`, `ec P-256`… for keys. */
  kind?: string;
  /** `sensitive`, `never extractable`, `private`… */
  access: string[];
  /** The key-id kmsbridge uses for a private key. */
  keyId?: string;
}

export interface Pkcs11Report {
  library: string;
  libraryInfo?: string;
  slots: Pkcs11SlotReport[];
  token?: string;
  pinStatus?: string[];
  mechanisms?: { name: string; offered: boolean }[];
  sessions?: string;
  objects?: Pkcs11ObjectReport[];
  notes: string[];
}

export function tokenFlags(f: number): string[] {
  const names: [number, string][] = [
    [C.CKF_LOGIN_REQUIRED, 'login required'],
    [C.CKF_USER_PIN_INITIALIZED, 'PIN initialized'],
    [C.CKF_TOKEN_INITIALIZED, 'token initialized'],
    [C.CKF_USER_PIN_COUNT_LOW, 'user PIN count low'],
    [C.CKF_USER_PIN_FINAL_TRY, 'user PIN final try'],
    [C.CKF_USER_PIN_LOCKED, 'user PIN locked'],
  ];
  return names.filter(([bit]) => f & bit).map(([, n]) => n);
}

/** The library's own description and every slot it reports, into `report`; false when the slots cannot be read. */
export function libraryReport(lib: LoadedLibrary, report: Pkcs11Report, explain: (err: unknown) => string): boolean {
  try {
    const info = lib.lib.C_GetInfo();
    report.libraryInfo = `${trimmed(info.libraryDescription)} ${info.libraryVersion.major}.${info.libraryVersion.minor} by ${trimmed(info.manufacturerID)}, Cryptoki ${info.cryptokiVersion.major}.${info.cryptokiVersion.minor}${lib.threadSafe ? '' : ' (initialized without OS locking: calls stay on one thread)'}`;
    const seen = new Map(tokensSeen(lib.lib).map((t) => [t.slot, t]));
    for (const slot of lib.lib.C_GetSlotList(false)) {
      const si = lib.lib.C_GetSlotInfo(slot);
      const n = slotNumber(slot);
      const t = seen.get(n);
      let flags: string[] = [];
      if (t) flags = tokenFlags(lib.lib.C_GetTokenInfo(slot).flags);
      report.slots.push({ slot: n, description: trimmed(si.slotDescription), ...(t ? { token: { ...t, flags } } : {}) });
    }
    if (report.slots.length === 0) report.notes.push('the library reports no slots');
  } catch (err) {
    report.notes.push(explain(err));
    return false;
  }
  return true;
}

export function objectsReport(s: Session): Pkcs11ObjectReport[] {
  const { keys } = privateKeys(s);
  const keyIds = keyIdsFor(keys);
  const byHandle = new Map(keys.map((k) => [k.handle.toString('hex'), k]));
  const out: Pkcs11ObjectReport[] = [];
  for (const h of findObjects(s, [])) {
    const a = attributes(s, h, [C.CKA_CLASS, C.CKA_LABEL, C.CKA_ID]);
    const cls = number(a.get(C.CKA_CLASS));
    const k = byHandle.get(h.toString('hex'));
    const access: string[] = [];
    if (cls === C.CKO_PRIVATE_KEY || cls === C.CKO_SECRET_KEY) {
      const f = attributes(s, h, [C.CKA_SENSITIVE, C.CKA_EXTRACTABLE, C.CKA_ALWAYS_SENSITIVE, C.CKA_NEVER_EXTRACTABLE, C.CKA_PRIVATE]);
      if (flag(f.get(C.CKA_SENSITIVE))) access.push('sensitive');
      if (flag(f.get(C.CKA_ALWAYS_SENSITIVE))) access.push('always sensitive');
      access.push(flag(f.get(C.CKA_EXTRACTABLE)) ? 'extractable' : 'non-extractable');
      if (flag(f.get(C.CKA_NEVER_EXTRACTABLE))) access.push('never extractable');
      if (flag(f.get(C.CKA_PRIVATE))) access.push('private');
    }
    const keyId = k ? keyIds.get(k) : undefined;
    out.push({
      class: className(cls),
      label: (a.get(C.CKA_LABEL) ?? Buffer.alloc(0)).toString('utf8'),
      id: (a.get(C.CKA_ID) ?? Buffer.alloc(0)).toString('hex'),
      ...(k ? { kind: kindName(k) } : {}),
      access,
      ...(keyId ? { keyId } : {}),
    });
  }
  const order = ['private key', 'public key', 'certificate'];
  const rank = (c: string) => (order.includes(c) ? order.indexOf(c) : order.length);
  return out.sort((a, b) => rank(a.class) - rank(b.class) || a.label.localeCompare(b.label) || a.id.localeCompare(b.id));
}
