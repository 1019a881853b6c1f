/** The vocabulary of the KeyService, shared by every backend, the wire format and the CLI. */

export const KEY_SPECS = ['rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256', 'ec-p384', 'ec-p521', 'ed25519'] as const;
export type KeySpec = (typeof KEY_SPECS)[number];

export type KeyType = 'rsa' | 'ec' | 'ed25519';
export type Curve = 'P-256' | 'P-384' | 'P-521';

export const DIGESTS = ['sha1', 'sha224', 'sha256', 'sha384', 'sha512'] as const;
export type Digest = (typeof DIGESTS)[number];
export const DIGEST_SIZE: Record<Digest, number> = { sha1: 20, sha224: 28, sha256: 32, sha384: 48, sha512: 64 };

export const SIGN_ALGORITHMS = ['rsa-pkcs1', 'rsa-pss', 'ecdsa', 'ed25519'] as const;
export type SignAlgorithm = (typeof SIGN_ALGORITHMS)[number];
export const DECRYPT_ALGORITHMS = ['rsa-oaep', 'rsa-pkcs1-decrypt'] as const;
export type DecryptAlgorithm = (typeof DECRYPT_ALGORITHMS)[number];
export type Algorithm = SignAlgorithm | DecryptAlgorithm | 'ecdh';

export interface KeyDescription {
  uri: string;
  keyType: KeyType;
  bits: number;
  curve?: Curve;
  /** SubjectPublicKeyInfo, DER. */
  publicKey: Buffer;
  algorithms: Algorithm[];
  digests: Digest[];
  mandatoryDigest?: Digest;
  /** 'digest' where the backend fixes the PSS salt length to the digest length (AWS KMS). */
  pssSalt: 'any' | 'digest';
  maxMessage?: number;
}

export interface KeySummary {
  uri: string;
  keyType: KeyType;
  bits: number;
  curve?: Curve;
}

export interface SignRequest {
  algorithm: SignAlgorithm;
  digest?: Digest;
  mgf1Digest?: Digest;
  saltLength?: number;
  /** The digest (RSA, ECDSA) or the whole message (Ed25519). */
  data: Buffer;
}

export interface DecryptRequest {
  algorithm: DecryptAlgorithm;
  digest?: Digest;
  mgf1Digest?: Digest;
  label?: Buffer;
  data: Buffer;
}

/** VERIFY: the fields of SIGN and the signature to check. */
export interface VerifyRequest extends SignRequest {
  signature: Buffer;
}

/** ENCRYPT: the fields of DECRYPT, with the plaintext as data. */
export type EncryptRequest = DecryptRequest;

export function specOf(keyType: KeyType, bits: number, curve?: Curve): KeySpec {
  if (keyType === 'rsa') return `rsa-${bits}` as KeySpec;
  if (keyType === 'ec') return `ec-${(curve ?? 'P-256').toLowerCase().replace('-', '')}` as KeySpec;
  return 'ed25519';
}

export function isDigest(s: string): s is Digest {
  return (DIGESTS as readonly string[]).includes(s);
}
