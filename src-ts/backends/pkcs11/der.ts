/**
 * The little DER a PKCS#11 backend needs: DigestInfo for CKM_RSA_PKCS,
 * ECDSA r‖s to a DER signature, SubjectPublicKeyInfo from a token's public
 * attributes, and reading CKA_EC_PARAMS / CKA_EC_POINT (which tokens return
 * with or without the DER OCTET STRING wrapping).
 */
import type { Curve, Digest } from '../../types.js';

// ---- writing -----------------------------------------------------------------

function length(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function tlv(tag: number, content: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), length(content.length), content]);
}

export const sequence = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items));
export const octetString = (b: Buffer): Buffer => tlv(0x04, b);
export const bitString = (b: Buffer): Buffer => tlv(0x03, Buffer.concat([Buffer.from([0]), b]));
export const derNull = (): Buffer => Buffer.from([0x05, 0x00]);

/** An unsigned big-endian integer as a DER INTEGER: minimal, with a 0 byte when the top bit is set. */
export function unsignedInteger(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  let v = b.subarray(i);
  if (v.length === 0) v = Buffer.from([0]);
  if (v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
  return tlv(0x02, v);
}

export function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number);
  const bytes: number[] = [40 * parts[0]! + parts[1]!];
  for (const part of parts.slice(2)) {
    const chunk: number[] = [part & 0x7f];
    for (let v = Math.floor(part / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | (v & 0x7f));
    bytes.push(...chunk);
  }
  return tlv(0x06, Buffer.from(bytes));
}

// ---- reading -----------------------------------------------------------------

export interface Tlv {
  tag: number;
  /** The content octets. */
  value: Buffer;
  /** Offset just past this element. */
  end: number;
}

/** Reads one DER element at `offset`; undefined if the bytes are not one. */
export function readTlv(b: Buffer, offset = 0): Tlv | undefined {
  if (offset + 2 > b.length) return undefined;
  const tag = b[offset]!;
  let len = b[offset + 1]!;
  let pos = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || pos + n > b.length) return undefined;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + b[pos + i]!;
    pos += n;
  }
  if (pos + len > b.length) return undefined;
  return { tag, value: b.subarray(pos, pos + len), end: pos + len };
}

// ---- algorithms ----------------------------------------------------------------

const DIGEST_OID: Record<Digest, string> = {
  sha1: '1.3.14.3.2.26',
  sha224: '2.16.840.1.101.3.4.2.4',
  sha256: '2.16.840.1.101.3.4.2.1',
  sha384: '2.16.840.1.101.3.4.2.2',
  sha512: '2.16.840.1.101.3.4.2.3',
};

/** The PKCS#1 v1.5 DigestInfo that CKM_RSA_PKCS signs (RFC 8017 §9.2). */
export function digestInfo(digest: Digest, hash: Buffer): Buffer {
  return sequence(sequence(oid(DIGEST_OID[digest]), derNull()), octetString(hash));
}

/** CKM_ECDSA returns r‖s, each half the signature; X.509 and TLS want SEQUENCE { r, s }. */
export function ecdsaSignatureToDer(rs: Buffer): Buffer {
  if (rs.length === 0 || rs.length % 2 !== 0) throw new Error(`token returned an ECDSA signature of odd length ${rs.length}`);
  const half = rs.length / 2;
  return sequence(unsignedInteger(rs.subarray(0, half)), unsignedInteger(rs.subarray(half)));
}

export type PkCurve = Curve | 'Ed25519';

interface CurveInfo {
  oid: string;
  /** Bytes of one coordinate (Ed25519: the whole public key). */
  size: number;
  bits: number;
}

export const CURVES: Record<PkCurve, CurveInfo> = {
  'P-256': { oid: '1.2.840.10045.3.1.7', size: 32, bits: 256 },
  'P-384': { oid: '1.3.132.0.34', size: 48, bits: 384 },
  'P-521': { oid: '1.3.132.0.35', size: 66, bits: 521 },
  Ed25519: { oid: '1.3.101.112', size: 32, bits: 256 },
};

/** PKCS#11 3.0 names Edwards curves by PrintableString; older tokens (SoftHSM) also take the RFC 8410 OID. */
export const ED25519_PARAMS = { oid: oid(CURVES.Ed25519.oid), name: tlv(0x13, Buffer.from('edwards25519')) };

export function curveParams(curve: Curve): Buffer {
  return oid(CURVES[curve].oid);
}

/** Reads CKA_EC_PARAMS: a named-curve OID or (Edwards) a PrintableString curve name. */
export function curveOfParams(params: Buffer): PkCurve | { unknown: string } {
  const t = readTlv(params);
  if (t && t.tag === 0x06) {
    for (const [name, info] of Object.entries(CURVES) as [PkCurve, CurveInfo][]) {
      if (oid(info.oid).equals(params.subarray(0, t.end))) return name;
    }
    return { unknown: `OID ${decodeOid(t.value)}` };
  }
  if (t && t.tag === 0x13) {
    const name = t.value.toString('latin1');
    if (name === 'edwards25519') return 'Ed25519';
    return { unknown: name };
  }
  return { unknown: `parameters ${params.toString('hex')}` };
}

function decodeOid(v: Buffer): string {
  if (v.length === 0) return '';
  const out = [Math.floor(v[0]! / 40), v[0]! % 40];
  let acc = 0;
  for (const byte of v.subarray(1)) {
    acc = acc * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) {
      out.push(acc);
      acc = 0;
    }
  }
  return out.join('.');
}

/**
 * CKA_EC_POINT should be the point wrapped in a DER OCTET STRING, but some
 * tokens return it bare. The curve fixes the bare length, which tells them apart.
 */
export function ecPointOfAttribute(value: Buffer, curve: PkCurve): Buffer | undefined {
  const size = CURVES[curve].size;
  const bare = curve === 'Ed25519' ? size : 2 * size + 1;
  const isBare = (b: Buffer) => b.length === bare && (curve === 'Ed25519' || b[0] === 0x04);
  if (isBare(value)) return value;
  const t = readTlv(value);
  if (t && t.tag === 0x04 && t.end === value.length && isBare(t.value)) return t.value;
  return undefined;
}

export function rsaSpki(modulus: Buffer, exponent: Buffer): Buffer {
  const key = sequence(unsignedInteger(modulus), unsignedInteger(exponent));
  return sequence(sequence(oid('1.2.840.113549.1.1.1'), derNull()), bitString(key));
}

export function ecSpki(curve: PkCurve, point: Buffer): Buffer {
  if (curve === 'Ed25519') return sequence(sequence(oid(CURVES.Ed25519.oid)), bitString(point));
  return sequence(sequence(oid('1.2.840.10045.2.1'), oid(CURVES[curve].oid)), bitString(point));
}

/** Bit length of a big-endian unsigned integer. */
export function bitLength(b: Buffer): number {
  let i = 0;
  while (i < b.length && b[i] === 0) i++;
  if (i === b.length) return 0;
  return (b.length - i - 1) * 8 + (32 - Math.clz32(b[i]!));
}
