/**
 * Signing and verifying a digest someone else computed, as AWS KMS does with
 * MessageType=DIGEST. node:crypto always hashes its input, so the test double
 * does the last step itself: PKCS#1 v1.5 DigestInfo and EMSA-PSS encoding
 * (RFC 8017) over the raw RSA primitive, and ECDSA (SEC 1, 4.1) with the
 * curve arithmetic that ECDH exposes. Good enough for a test double; not a
 * constant-time implementation and never used for real keys.
 */
import crypto from 'node:crypto';

export type HashName = 'sha256' | 'sha384' | 'sha512';
export type CurveName = 'P-256' | 'P-384' | 'P-521';

const HASH_LEN: Record<HashName, number> = { sha256: 32, sha384: 48, sha512: 64 };

/** DER of DigestInfo up to (not including) the digest bytes. */
const DIGEST_INFO: Record<HashName, Buffer> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

function checkDigest(hash: HashName, digest: Buffer): void {
  if (digest.length !== HASH_LEN[hash]) throw new RangeError(`digest must be ${HASH_LEN[hash]} bytes for ${hash}`);
}

function modulusBits(key: crypto.KeyObject): number {
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (!bits) throw new TypeError('not an RSA key');
  return bits;
}

export function rsaPkcs1SignDigest(key: crypto.KeyObject, hash: HashName, digest: Buffer): Buffer {
  checkDigest(hash, digest);
  return crypto.privateEncrypt({ key, padding: crypto.constants.RSA_PKCS1_PADDING }, Buffer.concat([DIGEST_INFO[hash], digest]));
}

export function rsaPkcs1VerifyDigest(key: crypto.KeyObject, hash: HashName, digest: Buffer, signature: Buffer): boolean {
  try {
    const decoded = crypto.publicDecrypt({ key, padding: crypto.constants.RSA_PKCS1_PADDING }, signature);
    return decoded.equals(Buffer.concat([DIGEST_INFO[hash], digest]));
  } catch {
    return false;
  }
}

function mgf1(hash: HashName, seed: Buffer, length: number): Buffer {
  const out: Buffer[] = [];
  for (let counter = 0, have = 0; have < length; counter++) {
    const c = Buffer.alloc(4);
    c.writeUInt32BE(counter);
    const block = crypto.createHash(hash).update(seed).update(c).digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, length);
}

function pssHash(hash: HashName, digest: Buffer, salt: Buffer): Buffer {
  return crypto.createHash(hash).update(Buffer.alloc(8)).update(digest).update(salt).digest();
}

/** RSASSA-PSS with MGF1 over the same hash and the salt length AWS KMS uses: the digest length. */
export function rsaPssSignDigest(key: crypto.KeyObject, hash: HashName, digest: Buffer): Buffer {
  checkDigest(hash, digest);
  const modBits = modulusBits(key);
  const emBits = modBits - 1;
  const emLen = Math.ceil(emBits / 8);
  const hLen = HASH_LEN[hash];
  const salt = crypto.randomBytes(hLen);
  const h = pssHash(hash, digest, salt);
  const db = Buffer.concat([Buffer.alloc(emLen - hLen - hLen - 2), Buffer.from([1]), salt]);
  const mask = mgf1(hash, h, db.length);
  for (let i = 0; i < db.length; i++) db[i]! ^= mask[i]!;
  db[0]! &= 0xff >> (8 * emLen - emBits);
  const em = Buffer.concat([db, h, Buffer.from([0xbc])]);
  const k = Math.ceil(modBits / 8);
  const block = Buffer.concat([Buffer.alloc(k - em.length), em]);
  return crypto.privateEncrypt({ key, padding: crypto.constants.RSA_NO_PADDING }, block);
}

export function rsaPssVerifyDigest(key: crypto.KeyObject, hash: HashName, digest: Buffer, signature: Buffer): boolean {
  const modBits = modulusBits(key);
  const emBits = modBits - 1;
  const emLen = Math.ceil(emBits / 8);
  const hLen = HASH_LEN[hash];
  let block: Buffer;
  try {
    block = crypto.publicDecrypt({ key, padding: crypto.constants.RSA_NO_PADDING }, signature);
  } catch {
    return false;
  }
  const em = block.subarray(block.length - emLen);
  if (block.subarray(0, block.length - emLen).some((b) => b !== 0)) return false;
  if (em[em.length - 1] !== 0xbc) return false;
  const db = Buffer.from(em.subarray(0, emLen - hLen - 1));
  const h = em.subarray(emLen - hLen - 1, emLen - 1);
  if ((db[0]! & ~(0xff >> (8 * emLen - emBits)) & 0xff) !== 0) return false;
  const mask = mgf1(hash, h, db.length);
  for (let i = 0; i < db.length; i++) db[i]! ^= mask[i]!;
  db[0]! &= 0xff >> (8 * emLen - emBits);
  const psLen = emLen - hLen - hLen - 2;
  if (db.subarray(0, psLen).some((b) => b !== 0) || db[psLen] !== 1) return false;
  const salt = db.subarray(psLen + 1);
  return crypto.timingSafeEqual(pssHash(hash, digest, salt), h);
}

// ---- ECDSA --------------------------------------------------------------------

interface Curve {
  nodeName: string;
  bytes: number;
  p: bigint;
  n: bigint;
}

const CURVES: Record<CurveName, Curve> = {
  'P-256': {
    nodeName: 'prime256v1',
    bytes: 32,
    p: (1n << 256n) - (1n << 224n) + (1n << 192n) + (1n << 96n) - 1n,
    n: BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551'),
  },
  'P-384': {
    nodeName: 'secp384r1',
    bytes: 48,
    p: (1n << 384n) - (1n << 128n) - (1n << 96n) + (1n << 32n) - 1n,
    n: BigInt('0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973'),
  },
  'P-521': {
    nodeName: 'secp521r1',
    bytes: 66,
    p: (1n << 521n) - 1n,
    n: BigInt('0x01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409'),
  },
};

const big = (b: Buffer): bigint => (b.length === 0 ? 0n : BigInt('0x' + b.toString('hex')));

function toBytes(v: bigint, len: number): Buffer {
  return Buffer.from(v.toString(16).padStart(len * 2, '0'), 'hex');
}

function mod(a: bigint, m: bigint): bigint {
  const r = a % m;
  return r < 0n ? r + m : r;
}

function inverse(a: bigint, m: bigint): bigint {
  let [r0, r1] = [mod(a, m), m];
  let [s0, s1] = [1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  return mod(s0, m);
}

/** The point k·G, computed by OpenSSL through ECDH (public key of the private scalar k). */
function baseMultiply(c: Curve, k: bigint): { x: bigint; y: bigint } {
  const ecdh = crypto.createECDH(c.nodeName);
  ecdh.setPrivateKey(toBytes(k, c.bytes));
  const pub = ecdh.getPublicKey();
  return { x: big(pub.subarray(1, 1 + c.bytes)), y: big(pub.subarray(1 + c.bytes)) };
}

/** The digest as an integer, truncated to the bit length of n (SEC 1, 4.1.3 step 5). */
function digestInt(c: Curve, digest: Buffer): bigint {
  const nBits = c.n.toString(2).length;
  let e = big(digest);
  if (digest.length * 8 > nBits) e >>= BigInt(digest.length * 8 - nBits);
  return e;
}

function derInt(v: bigint): Buffer {
  let hex = v.toString(16);
  if (hex.length % 2) hex = '0' + hex;
  let b = Buffer.from(hex, 'hex');
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return Buffer.concat([Buffer.from([0x02, b.length]), b]);
}

function derSequence(body: Buffer): Buffer {
  const len = body.length < 0x80 ? Buffer.from([body.length]) : Buffer.from([0x81, body.length]);
  return Buffer.concat([Buffer.from([0x30]), len, body]);
}

function parseDerSignature(sig: Buffer): { r: bigint; s: bigint } | undefined {
  let i = 0;
  if (sig[i++] !== 0x30) return undefined;
  let len = sig[i++]!;
  if (len === 0x81) len = sig[i++]!;
  if (len !== sig.length - i) return undefined;
  const readInt = (): bigint | undefined => {
    if (sig[i++] !== 0x02) return undefined;
    const l = sig[i++]!;
    if (l === undefined || i + l > sig.length) return undefined;
    const v = big(sig.subarray(i, i + l));
    i += l;
    return v;
  };
  const r = readInt();
  const s = readInt();
  if (r === undefined || s === undefined || i !== sig.length) return undefined;
  return { r, s };
}

/** ECDSA over a digest; the signature is DER (SEQUENCE of r and s), as AWS KMS returns it. */
export function ecdsaSignDigest(key: crypto.KeyObject, curve: CurveName, digest: Buffer): Buffer {
  const c = CURVES[curve];
  const jwk = key.export({ format: 'jwk' });
  if (typeof jwk.d !== 'string') throw new TypeError('not an EC private key');
  const d = big(Buffer.from(jwk.d, 'base64url'));
  const e = digestInt(c, digest);
  for (;;) {
    const k = mod(big(crypto.randomBytes(c.bytes + 8)), c.n - 1n) + 1n;
    const r = mod(baseMultiply(c, k).x, c.n);
    if (r === 0n) continue;
    const s = mod(inverse(k, c.n) * (e + r * d), c.n);
    if (s === 0n) continue;
    return derSequence(Buffer.concat([derInt(r), derInt(s)]));
  }
}

type Point = { x: bigint; y: bigint } | null;

function add(c: Curve, a: Point, b: Point): Point {
  if (!a) return b;
  if (!b) return a;
  const { p } = c;
  let l: bigint;
  if (a.x === b.x) {
    if (mod(a.y + b.y, p) === 0n) return null;
    l = mod(3n * (a.x * a.x - 1n) * inverse(2n * a.y, p), p); // a = -3 on the NIST curves
  } else {
    l = mod((b.y - a.y) * inverse(b.x - a.x, p), p);
  }
  const x = mod(l * l - a.x - b.x, p);
  return { x, y: mod(l * (a.x - x) - a.y, p) };
}

function multiply(c: Curve, k: bigint, pt: Point): Point {
  let result: Point = null;
  let addend = pt;
  for (let e = k; e > 0n; e >>= 1n) {
    if (e & 1n) result = add(c, result, addend);
    addend = add(c, addend, addend);
  }
  return result;
}

export function ecdsaVerifyDigest(key: crypto.KeyObject, curve: CurveName, digest: Buffer, signature: Buffer): boolean {
  const c = CURVES[curve];
  const sig = parseDerSignature(signature);
  if (!sig || sig.r <= 0n || sig.r >= c.n || sig.s <= 0n || sig.s >= c.n) return false;
  const jwk = key.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string' || typeof jwk.y !== 'string') return false;
  const q = { x: big(Buffer.from(jwk.x, 'base64url')), y: big(Buffer.from(jwk.y, 'base64url')) };
  const w = inverse(sig.s, c.n);
  const u1 = mod(digestInt(c, digest) * w, c.n);
  const u2 = mod(sig.r * w, c.n);
  const point = add(c, u1 === 0n ? null : baseMultiply(c, u1), multiply(c, u2, q));
  return point !== null && mod(point.x, c.n) === sig.r;
}
