/**
 * Finding key objects on a token and reading what kmsbridge needs from them:
 * type, size or curve, usage flags, and the public key as SPKI DER, from the
 * public object (or from the private object's public attributes).
 */
import type { Template } from 'pkcs11js';
import { badRequest, keyUnusable } from '../../errors.js';
import type { Curve, KeyType } from '../../types.js';
import * as C from './constants.js';
import { CURVES, bitLength, curveOfParams, ecPointOfAttribute, ecSpki, rsaSpki, type PkCurve } from './der.js';
import { formatKeyId, type KeySelector } from './key-id.js';
import { ckrOf } from './library.js';
import type { Session } from './token.js';

const MAX_OBJECTS = 10_000;

/** Every object handle matching `template`. */
export function findObjects(s: Session, template: Template): Buffer[] {
  s.lib.C_FindObjectsInit(s.handle, template);
  const out: Buffer[] = [];
  try {
    for (;;) {
      const batch = s.lib.C_FindObjects(s.handle, 64);
      if (batch.length === 0 || out.length >= MAX_OBJECTS) break;
      out.push(...batch);
    }
  } finally {
    s.lib.C_FindObjectsFinal(s.handle);
  }
  return out;
}

/** One attribute, or undefined where the object has none or keeps it secret. */
export function attribute(s: Session, obj: Buffer, type: number): Buffer | undefined {
  try {
    const [a] = s.lib.C_GetAttributeValue(s.handle, obj, [{ type }]);
    return a?.value;
  } catch (err) {
    const rv = ckrOf(err);
    if (rv === C.CKR_ATTRIBUTE_TYPE_INVALID || rv === C.CKR_ATTRIBUTE_SENSITIVE) return undefined;
    throw err;
  }
}

/** Several attributes in one call when the object has all of them, else one by one. */
export function attributes(s: Session, obj: Buffer, types: number[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  try {
    for (const a of s.lib.C_GetAttributeValue(
      s.handle,
      obj,
      types.map((type) => ({ type })),
    )) {
      if (a.value) out.set(a.type, a.value);
    }
    return out;
  } catch (err) {
    const rv = ckrOf(err);
    if (rv !== C.CKR_ATTRIBUTE_TYPE_INVALID && rv !== C.CKR_ATTRIBUTE_SENSITIVE) throw err;
  }
  for (const type of types) {
    const v = attribute(s, obj, type);
    if (v) out.set(type, v);
  }
  return out;
}

export const flag = (v: Buffer | undefined): boolean => v !== undefined && v.length > 0 && v[0] !== 0;

export function number(v: Buffer | undefined): number | undefined {
  if (!v || v.length === 0) return undefined;
  if (v.length >= 8) return Number(v.readBigUInt64LE(0) & 0xffffffffn);
  if (v.length >= 4) return v.readUInt32LE(0);
  return v[0];
}

export function selectorTemplate(cls: number, sel: { id?: Buffer; label?: string }): Template {
  const t: Template = [{ type: C.CKA_CLASS, value: cls }];
  if (sel.id !== undefined) t.push({ type: C.CKA_ID, value: sel.id });
  if (sel.label !== undefined) t.push({ type: C.CKA_LABEL, value: Buffer.from(sel.label, 'utf8') });
  return t;
}

/** A private key on the token and what it can do. */
export interface TokenKey {
  handle: Buffer;
  id: Buffer;
  label: string;
  keyType: KeyType;
  bits: number;
  curve?: PkCurve;
  /** RSA: the modulus (public), to size outputs and match the public object. */
  modulus?: Buffer;
  sign: boolean;
  decrypt: boolean;
  derive: boolean;
  alwaysAuthenticate: boolean;
}

const KEY_ATTRS = [C.CKA_KEY_TYPE, C.CKA_ID, C.CKA_LABEL, C.CKA_SIGN, C.CKA_DECRYPT, C.CKA_DERIVE];

function keyKind(s: Session, obj: Buffer, keyType: number | undefined): { keyType: KeyType; bits: number; curve?: PkCurve; modulus?: Buffer } | string {
  if (keyType === C.CKK_RSA) {
    const modulus = attribute(s, obj, C.CKA_MODULUS);
    if (!modulus) return 'an RSA key without a readable modulus';
    return { keyType: 'rsa', bits: bitLength(modulus), modulus };
  }
  if (keyType === C.CKK_EC || keyType === C.CKK_EC_EDWARDS) {
    const params = attribute(s, obj, C.CKA_EC_PARAMS);
    if (!params) return 'an EC key without CKA_EC_PARAMS';
    const curve = curveOfParams(params);
    if (typeof curve !== 'string') return `a key on curve ${curve.unknown}, which kmsbridge does not support (P-256, P-384, P-521, Ed25519)`;
    if ((curve === 'Ed25519') !== (keyType === C.CKK_EC_EDWARDS)) return `a key whose type does not match its curve ${curve}`;
    return curve === 'Ed25519' ? { keyType: 'ed25519', bits: 256, curve } : { keyType: 'ec', bits: CURVES[curve].bits, curve };
  }
  return `a key of PKCS#11 key type 0x${(keyType ?? 0).toString(16)}, which kmsbridge does not support (RSA, EC, Ed25519)`;
}

/** Reads a private key object; a string says why kmsbridge cannot use it. */
export function readKey(s: Session, handle: Buffer): TokenKey | string {
  const a = attributes(s, handle, KEY_ATTRS);
  const kind = keyKind(s, handle, number(a.get(C.CKA_KEY_TYPE)));
  if (typeof kind === 'string') return kind;
  return {
    handle,
    id: a.get(C.CKA_ID) ?? Buffer.alloc(0),
    label: (a.get(C.CKA_LABEL) ?? Buffer.alloc(0)).toString('utf8'),
    ...kind,
    sign: flag(a.get(C.CKA_SIGN)),
    decrypt: flag(a.get(C.CKA_DECRYPT)),
    derive: flag(a.get(C.CKA_DERIVE)),
    alwaysAuthenticate: flag(attribute(s, handle, C.CKA_ALWAYS_AUTHENTICATE)),
  };
}

export function kindName(k: { keyType: KeyType; bits: number; curve?: PkCurve }): string {
  return k.keyType === 'rsa' ? `rsa-${k.bits}` : k.keyType === 'ec' ? `ec ${k.curve}` : 'ed25519';
}

/** The curve as the KeyService names it (Ed25519 has none there). */
export function serviceCurve(k: TokenKey): Curve | undefined {
  return k.keyType === 'ec' ? (k.curve as Curve) : undefined;
}

/** The public objects that belong to a private key: same CKA_ID (and CKA_LABEL where the id is empty). */
export function publicObjects(s: Session, k: TokenKey): Buffer[] {
  if (k.id.length > 0) {
    const byId = findObjects(s, selectorTemplate(C.CKO_PUBLIC_KEY, { id: k.id }));
    if (byId.length <= 1 || !k.label) return byId;
    const both = findObjects(s, selectorTemplate(C.CKO_PUBLIC_KEY, { id: k.id, label: k.label }));
    return both.length > 0 ? both : byId;
  }
  return k.label ? findObjects(s, selectorTemplate(C.CKO_PUBLIC_KEY, { label: k.label })) : [];
}

function spkiOfObject(s: Session, obj: Buffer, k: TokenKey): Buffer | undefined {
  if (k.keyType === 'rsa') {
    const a = attributes(s, obj, [C.CKA_MODULUS, C.CKA_PUBLIC_EXPONENT]);
    const n = a.get(C.CKA_MODULUS);
    const e = a.get(C.CKA_PUBLIC_EXPONENT);
    // A public object with the same id but another modulus belongs to another key.
    if (!n || !e || (k.modulus && bitLength(n) > 0 && !stripZeros(n).equals(stripZeros(k.modulus)))) return undefined;
    return rsaSpki(n, e);
  }
  const a = attributes(s, obj, [C.CKA_EC_PARAMS, C.CKA_EC_POINT]);
  const params = a.get(C.CKA_EC_PARAMS);
  const pointAttr = a.get(C.CKA_EC_POINT);
  if (!pointAttr || (params && curveOfParams(params) !== k.curve)) return undefined;
  const point = ecPointOfAttribute(pointAttr, k.curve!);
  return point ? ecSpki(k.curve!, point) : undefined;
}

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** SubjectPublicKeyInfo DER of a private key's public half. */
export function publicKeyOf(s: Session, k: TokenKey, keyRef: string): Buffer {
  // RSA: the private object holds the public half itself (modulus and exponent), one read instead of a search.
  const e = k.keyType === 'rsa' && k.modulus ? attribute(s, k.handle, C.CKA_PUBLIC_EXPONENT) : undefined;
  if (e && k.modulus) return rsaSpki(k.modulus, e);
  for (const obj of publicObjects(s, k)) {
    const spki = spkiOfObject(s, obj, k);
    if (spki) return spki;
  }
  // No public object: the private object's public attributes (EC/EdDSA on PKCS#11 3.0 tokens).
  const info = attribute(s, k.handle, C.CKA_PUBLIC_KEY_INFO);
  if (info && info.length > 0) return info;
  const point = attribute(s, k.handle, C.CKA_EC_POINT);
  const bare = point && k.curve ? ecPointOfAttribute(point, k.curve) : undefined;
  if (bare) return ecSpki(k.curve!, bare);
  throw keyUnusable(
    `key ${keyRef} has no public key on the token: no public key object with CKA_ID ${k.id.toString('hex') || '(empty)'} and no public attributes on the private key; import the public key with the same id (pkcs11-tool --write-object <pub.der> --type pubkey --id ${k.id.toString('hex') || '<id>'})`,
  );
}

/** The key-id kmsbridge prints for each private key: the label where it is unique, else the id. */
export function keyIdsFor(keys: TokenKey[]): Map<TokenKey, string> {
  const count = (f: (k: TokenKey) => string) => {
    const m = new Map<string, number>();
    for (const k of keys) m.set(f(k), (m.get(f(k)) ?? 0) + 1);
    return m;
  };
  const labels = count((k) => k.label);
  const ids = count((k) => k.id.toString('hex'));
  const out = new Map<TokenKey, string>();
  for (const k of keys) {
    const hex = k.id.toString('hex');
    if (k.label && labels.get(k.label) === 1) out.set(k, formatKeyId({ label: k.label }));
    else if (hex && ids.get(hex) === 1) out.set(k, formatKeyId({ id: k.id }));
    else if (hex || k.label) out.set(k, formatKeyId({ id: k.id, label: k.label }));
  }
  return out;
}

/** Every private key on the token kmsbridge can use, with the key-id to reach it; others with the reason. */
export function privateKeys(s: Session): { keys: TokenKey[]; skipped: { id: Buffer; label: string; why: string }[] } {
  const keys: TokenKey[] = [];
  const skipped: { id: Buffer; label: string; why: string }[] = [];
  for (const h of findObjects(s, [{ type: C.CKA_CLASS, value: C.CKO_PRIVATE_KEY }])) {
    const k = readKey(s, h);
    if (typeof k === 'string') {
      const a = attributes(s, h, [C.CKA_ID, C.CKA_LABEL]);
      skipped.push({ id: a.get(C.CKA_ID) ?? Buffer.alloc(0), label: (a.get(C.CKA_LABEL) ?? Buffer.alloc(0)).toString('utf8'), why: k });
    } else keys.push(k);
  }
  return { keys, skipped };
}

const CLASS_NAMES: Record<number, string> = {
  [C.CKO_DATA]: 'data object',
  [C.CKO_CERTIFICATE]: 'certificate',
  [C.CKO_PUBLIC_KEY]: 'public key',
  [C.CKO_PRIVATE_KEY]: 'private key',
  [C.CKO_SECRET_KEY]: 'secret key',
};

export function className(cls: number | undefined): string {
  return cls !== undefined ? (CLASS_NAMES[cls] ?? `object class 0x${cls.toString(16)}`) : 'object';
}

/** For a key-id that matches no private key: what does match, and which private keys exist. */
export function notFoundDetail(s: Session, sel: KeySelector): string {
  const others: string[] = [];
  for (const cls of [C.CKO_PUBLIC_KEY, C.CKO_CERTIFICATE, C.CKO_SECRET_KEY, C.CKO_DATA]) {
    const n = findObjects(s, selectorTemplate(cls, sel)).length;
    if (n > 0) others.push(`${n} ${className(cls)}${n > 1 ? 's' : ''}`);
  }
  const { keys } = privateKeys(s);
  const ids = keyIdsFor(keys);
  const listed = keys
    .map((k) => `${ids.get(k) ?? '(no id or label)'} (${kindName(k)})`)
    .sort()
    .slice(0, 20);
  const more = keys.length > 20 ? `, and ${keys.length - 20} more` : '';
  return [
    others.length ? `objects that do match: ${others.join(', ')}, but no private key (the private key may be on another token, or was never imported)` : '',
    `private keys on the token: ${listed.length ? listed.join(', ') + more : 'none'}`,
  ]
    .filter(Boolean)
    .join('; ');
}

export function checkTokenOf(sel: KeySelector, tokenLabel: string | undefined, keyId: string): void {
  if (sel.token !== undefined && sel.token !== tokenLabel) {
    throw badRequest(
      `key-id '${keyId}' names token '${sel.token}', but this keyring uses ${tokenLabel !== undefined ? `token '${tokenLabel}'` : 'a token chosen by slot'}; drop token= or use the keyring of that token`,
    );
  }
}
