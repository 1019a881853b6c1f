/**
 * kmsbridge's vocabulary to AWS KMS's and back: key specs, signing and
 * encryption algorithm names, and what a key can do as GetPublicKey reports
 * it. Pure functions; every refusal says why in AWS KMS's terms.
 */
import type { EncryptionAlgorithmSpec, KeySpec as AwsKeySpec, SigningAlgorithmSpec } from '@aws-sdk/client-kms';
import { unsupported } from '../../errors.js';
import { DIGEST_SIZE, type Algorithm, type Curve, type DecryptRequest, type Digest, type KeySpec, type KeyType, type SignRequest } from '../../types.js';
import type { BackendKeyDescription } from '../backend.js';
import type { AwsKeyUsage } from './settings.js';

/** AWS KMS signs raw (unhashed) Ed25519 messages up to this many bytes. */
export const ED25519_MAX_MESSAGE = 4096;
/** GenerateRandom returns at most this many bytes per call. */
export const RANDOM_CHUNK = 1024;

interface SpecInfo {
  keyType: KeyType;
  bits: number;
  curve?: Curve;
}

const AWS_SPECS: Record<string, SpecInfo> = {
  RSA_2048: { keyType: 'rsa', bits: 2048 },
  RSA_3072: { keyType: 'rsa', bits: 3072 },
  RSA_4096: { keyType: 'rsa', bits: 4096 },
  ECC_NIST_P256: { keyType: 'ec', bits: 256, curve: 'P-256' },
  ECC_NIST_P384: { keyType: 'ec', bits: 384, curve: 'P-384' },
  ECC_NIST_P521: { keyType: 'ec', bits: 521, curve: 'P-521' },
  ECC_NIST_EDWARDS25519: { keyType: 'ed25519', bits: 256 },
};

const TO_AWS_SPEC: Record<KeySpec, AwsKeySpec> = {
  'rsa-2048': 'RSA_2048',
  'rsa-3072': 'RSA_3072',
  'rsa-4096': 'RSA_4096',
  'ec-p256': 'ECC_NIST_P256',
  'ec-p384': 'ECC_NIST_P384',
  'ec-p521': 'ECC_NIST_P521',
  ed25519: 'ECC_NIST_EDWARDS25519',
};

/** AWS KMS binds each NIST curve to one digest. */
export const CURVE_DIGEST: Record<Curve, Digest> = { 'P-256': 'sha256', 'P-384': 'sha384', 'P-521': 'sha512' };

const AWS_DIGEST: Partial<Record<Digest, string>> = { sha256: 'SHA_256', sha384: 'SHA_384', sha512: 'SHA_512' };

export function specInfo(awsSpec: string | undefined, keyId: string): SpecInfo {
  const info = awsSpec ? AWS_SPECS[awsSpec] : undefined;
  if (!info) {
    throw unsupported(`AWS KMS key ${keyId} has key spec ${awsSpec ?? 'unknown'}, which kmsbridge does not use (it uses ${Object.keys(AWS_SPECS).join(', ')})`);
  }
  return info;
}

export function isUsableSpec(awsSpec: string | undefined): boolean {
  return awsSpec !== undefined && awsSpec in AWS_SPECS;
}

/** The CreateKey parameters for a kmsbridge key type and the keyring's key_usage. */
export function createParameters(spec: KeySpec, usage: AwsKeyUsage, keyring: string): { KeySpec: AwsKeySpec; KeyUsage: AwsKeyUsage } {
  const awsSpec = TO_AWS_SPEC[spec];
  const keyType = AWS_SPECS[awsSpec]!.keyType;
  const fits = usage === 'SIGN_VERIFY' || (usage === 'ENCRYPT_DECRYPT' && keyType === 'rsa') || (usage === 'KEY_AGREEMENT' && keyType === 'ec');
  if (!fits) {
    throw unsupported(
      `AWS KMS does not make ${spec} keys for ${usage} (keyring '${keyring}' has key_usage = "${usage}"): ENCRYPT_DECRYPT is for RSA keys, KEY_AGREEMENT for EC keys`,
    );
  }
  return { KeySpec: awsSpec, KeyUsage: usage };
}

export interface AwsKeyInfo {
  /** The key ARN GetPublicKey named: later calls use it, so an alias moved meanwhile cannot mismatch the public key. */
  arn: string;
  awsSpec: string;
  usage: string;
  description: BackendKeyDescription;
  signing: string[];
  encryption: string[];
  agreement: string[];
}

/** What a key can do, from GetPublicKey's answer. */
export function describeKey(
  keyId: string,
  r: {
    KeyId?: string;
    KeySpec?: string;
    KeyUsage?: string;
    PublicKey?: Uint8Array;
    SigningAlgorithms?: string[];
    EncryptionAlgorithms?: string[];
    KeyAgreementAlgorithms?: string[];
  },
): AwsKeyInfo {
  const info = specInfo(r.KeySpec, keyId);
  if (!r.PublicKey || r.PublicKey.length === 0) throw unsupported(`AWS KMS returned no public key for ${keyId}`);
  const signing = r.SigningAlgorithms ?? [];
  const encryption = r.EncryptionAlgorithms ?? [];
  const agreement = r.KeyAgreementAlgorithms ?? [];
  const algorithms: Algorithm[] = [];
  const digests = new Set<Digest>();
  let mandatoryDigest: Digest | undefined;
  const usage = r.KeyUsage ?? '';
  if (usage === 'SIGN_VERIFY') {
    for (const a of signing) {
      const m = /^(RSASSA_PKCS1_V1_5|RSASSA_PSS|ECDSA)_SHA_(256|384|512)$/.exec(a);
      if (m) {
        const alg = m[1] === 'RSASSA_PSS' ? 'rsa-pss' : m[1] === 'ECDSA' ? 'ecdsa' : 'rsa-pkcs1';
        if (!algorithms.includes(alg)) algorithms.push(alg);
        digests.add(`sha${m[2]}` as Digest);
      }
      if (a === 'ED25519_SHA_512' && !algorithms.includes('ed25519')) algorithms.push('ed25519');
    }
    if (info.keyType === 'ec') mandatoryDigest = CURVE_DIGEST[info.curve!];
  } else if (usage === 'ENCRYPT_DECRYPT') {
    if (encryption.some((a) => a === 'RSAES_OAEP_SHA_1' || a === 'RSAES_OAEP_SHA_256')) algorithms.push('rsa-oaep');
  } else if (usage === 'KEY_AGREEMENT') {
    if (agreement.includes('ECDH') && info.keyType === 'ec') algorithms.push('ecdh');
  }
  const order: Digest[] = ['sha256', 'sha384', 'sha512'];
  return {
    arn: r.KeyId ?? keyId,
    awsSpec: r.KeySpec!,
    usage,
    signing,
    encryption,
    agreement,
    description: {
      keyType: info.keyType,
      bits: info.bits,
      ...(info.curve ? { curve: info.curve } : {}),
      publicKey: Buffer.from(r.PublicKey),
      algorithms,
      digests: order.filter((d) => digests.has(d)),
      ...(mandatoryDigest ? { mandatoryDigest } : {}),
      pssSalt: 'digest',
      ...(info.keyType === 'ed25519' ? { maxMessage: ED25519_MAX_MESSAGE } : {}),
    },
  };
}

function usageHint(key: AwsKeyInfo, keyId: string, wanted: string): string {
  return `AWS KMS key ${keyId} has key usage ${key.usage}, so it cannot ${wanted}; AWS KMS fixes a key's usage when the key is created`;
}

/** The Sign parameters for a request, or a clear refusal. */
export function signParameters(key: AwsKeyInfo, keyId: string, req: SignRequest): { SigningAlgorithm: SigningAlgorithmSpec; MessageType: 'DIGEST' | 'RAW' } {
  if (key.usage !== 'SIGN_VERIFY') throw unsupported(usageHint(key, keyId, 'sign'));
  if (req.algorithm === 'ed25519') {
    if (req.data.length > ED25519_MAX_MESSAGE) {
      throw unsupported(`AWS KMS signs Ed25519 messages of at most ${ED25519_MAX_MESSAGE} bytes; this one has ${req.data.length} (key ${keyId})`);
    }
    return offered(key, keyId, 'ED25519_SHA_512', 'RAW');
  }
  const digest = req.digest;
  if (digest === 'sha1') throw unsupported(`AWS KMS does not sign SHA-1 digests (key ${keyId}); use SHA-256, SHA-384 or SHA-512`);
  if (digest === undefined) {
    throw unsupported(`AWS KMS signs only SHA-256/384/512 digests, not raw ${req.algorithm} input without a digest (key ${keyId})`);
  }
  const name = AWS_DIGEST[digest];
  if (!name) throw unsupported(`AWS KMS does not sign ${digest} digests (key ${keyId}); use SHA-256, SHA-384 or SHA-512`);
  switch (req.algorithm) {
    case 'rsa-pkcs1':
      return offered(key, keyId, `RSASSA_PKCS1_V1_5_${name}`, 'DIGEST');
    case 'rsa-pss': {
      const mgf1 = req.mgf1Digest ?? digest;
      if (mgf1 !== digest) throw unsupported(`AWS KMS uses MGF1 with the signature digest (${digest}) for RSA-PSS, not ${mgf1} (key ${keyId})`);
      const size = DIGEST_SIZE[digest];
      if (req.saltLength !== undefined && req.saltLength !== size) {
        throw unsupported(`AWS KMS fixes the RSA-PSS salt length to the digest length (${size} bytes for ${digest}), not ${req.saltLength} (key ${keyId})`);
      }
      return offered(key, keyId, `RSASSA_PSS_${name}`, 'DIGEST');
    }
    case 'ecdsa': {
      const curve = key.description.curve!;
      const bound = CURVE_DIGEST[curve];
      if (digest !== bound) throw unsupported(`AWS KMS signs with ${curve} keys only over ${bound} digests, not ${digest} (key ${keyId})`);
      return offered(key, keyId, `ECDSA_${name}`, 'DIGEST');
    }
  }
}

function offered(
  key: AwsKeyInfo,
  keyId: string,
  algorithm: string,
  messageType: 'DIGEST' | 'RAW',
): { SigningAlgorithm: SigningAlgorithmSpec; MessageType: 'DIGEST' | 'RAW' } {
  if (!key.signing.includes(algorithm)) {
    throw unsupported(`AWS KMS key ${keyId} does not offer ${algorithm}; it offers ${key.signing.join(', ') || 'no signing algorithm'}`);
  }
  return { SigningAlgorithm: algorithm as SigningAlgorithmSpec, MessageType: messageType };
}

/** The Decrypt parameters for a request, or a clear refusal. */
export function decryptAlgorithm(key: AwsKeyInfo, keyId: string, req: DecryptRequest): EncryptionAlgorithmSpec {
  if (key.usage !== 'ENCRYPT_DECRYPT') throw unsupported(usageHint(key, keyId, 'decrypt'));
  if (req.algorithm !== 'rsa-oaep') {
    throw unsupported(`AWS KMS does not decrypt PKCS#1 v1.5 (key ${keyId}); it offers RSAES_OAEP_SHA_1 and RSAES_OAEP_SHA_256`);
  }
  const digest = req.digest ?? 'sha1';
  const mgf1 = req.mgf1Digest ?? digest;
  if (digest !== 'sha1' && digest !== 'sha256') {
    throw unsupported(`AWS KMS decrypts OAEP with SHA-1 or SHA-256 only, not ${digest} (key ${keyId})`);
  }
  if (mgf1 !== digest) throw unsupported(`AWS KMS uses MGF1 with the OAEP digest (${digest}), not ${mgf1} (key ${keyId})`);
  if (req.label && req.label.length > 0) throw unsupported(`AWS KMS does not take an OAEP label (key ${keyId})`);
  const algorithm: EncryptionAlgorithmSpec = digest === 'sha1' ? 'RSAES_OAEP_SHA_1' : 'RSAES_OAEP_SHA_256';
  if (!key.encryption.includes(algorithm)) {
    throw unsupported(`AWS KMS key ${keyId} does not offer ${algorithm}; it offers ${key.encryption.join(', ') || 'no encryption algorithm'}`);
  }
  return algorithm;
}

export function checkDerive(key: AwsKeyInfo, keyId: string): void {
  if (key.usage !== 'KEY_AGREEMENT') throw unsupported(usageHint(key, keyId, 'derive a shared secret (ECDH needs a KEY_AGREEMENT key)'));
}
