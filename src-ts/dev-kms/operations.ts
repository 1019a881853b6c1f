/**
 * The operations of the AWS KMS test double on keys held in memory: real
 * node:crypto keys behind AWS KMS's request and response shapes (JSON, blobs
 * in base64, dates in epoch seconds) and AWS's error types. Only what
 * kmsbridge and its tests use is here; anything else is refused as unknown.
 */
import crypto from 'node:crypto';
import {
  ecdsaSignDigest,
  ecdsaVerifyDigest,
  rsaPkcs1SignDigest,
  rsaPkcs1VerifyDigest,
  rsaPssSignDigest,
  rsaPssVerifyDigest,
  type CurveName,
  type HashName,
} from './digest-sign.js';

/** An error answered the AWS way: HTTP status, `__type` and `message`. */
export class AwsFault extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

const validation = (message: string) => new AwsFault(400, 'ValidationException', message);

type Json = Record<string, unknown>;

type KeyUsage = 'SIGN_VERIFY' | 'ENCRYPT_DECRYPT' | 'KEY_AGREEMENT';
type KeyState = 'Enabled' | 'Disabled' | 'PendingDeletion';

interface SpecInfo {
  usages: KeyUsage[];
  signing: string[];
  encryption: string[];
  agreement: string[];
  generate: () => crypto.KeyPairKeyObjectResult;
}

const RSA_SIGNING = [
  'RSASSA_PSS_SHA_256',
  'RSASSA_PSS_SHA_384',
  'RSASSA_PSS_SHA_512',
  'RSASSA_PKCS1_V1_5_SHA_256',
  'RSASSA_PKCS1_V1_5_SHA_384',
  'RSASSA_PKCS1_V1_5_SHA_512',
];
const RSA_ENCRYPTION = ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'];

const rsa = (bits: number): SpecInfo => ({
  usages: ['SIGN_VERIFY', 'ENCRYPT_DECRYPT'],
  signing: RSA_SIGNING,
  encryption: RSA_ENCRYPTION,
  agreement: [],
  generate: () => crypto.generateKeyPairSync('rsa', { modulusLength: bits, publicExponent: 0x10001 }),
});
const ec = (curve: CurveName, signing: string): SpecInfo => ({
  usages: ['SIGN_VERIFY', 'KEY_AGREEMENT'],
  signing: [signing],
  encryption: [],
  agreement: ['ECDH'],
  generate: () => crypto.generateKeyPairSync('ec', { namedCurve: curve }),
});

const SPECS: Record<string, SpecInfo> = {
  RSA_2048: rsa(2048),
  RSA_3072: rsa(3072),
  RSA_4096: rsa(4096),
  ECC_NIST_P256: ec('P-256', 'ECDSA_SHA_256'),
  ECC_NIST_P384: ec('P-384', 'ECDSA_SHA_384'),
  ECC_NIST_P521: ec('P-521', 'ECDSA_SHA_512'),
  ECC_NIST_EDWARDS25519: {
    usages: ['SIGN_VERIFY'],
    signing: ['ED25519_SHA_512', 'ED25519_PH_SHA_512'],
    encryption: [],
    agreement: [],
    generate: () => crypto.generateKeyPairSync('ed25519'),
  },
};

const CURVE_OF: Record<string, CurveName> = { ECC_NIST_P256: 'P-256', ECC_NIST_P384: 'P-384', ECC_NIST_P521: 'P-521' };
const MAX_RAW_MESSAGE = 4096;

interface Key {
  id: string;
  arn: string;
  spec: string;
  usage: KeyUsage;
  state: KeyState;
  description: string;
  created: number;
  deletionDate?: number;
  privateKey: crypto.KeyObject;
  publicKey: crypto.KeyObject;
}

interface Alias {
  name: string;
  keyId: string;
  created: number;
}

export interface DevKmsIdentity {
  region: string;
  accountId: string;
}

/** What is kept between runs of `kmsbridge dev-kms --state <file>`. */
export interface DevKmsState {
  format: 'kmsbridge-dev-kms-state';
  version: 1;
  keys: { id: string; spec: string; usage: KeyUsage; state: KeyState; description: string; created: number; deletionDate?: number; pkcs8: string }[];
  aliases: Alias[];
}

function str(input: Json, name: string, required = true): string | undefined {
  const v = input[name];
  if (v === undefined || v === null) {
    if (required)
      throw validation(
        `1 validation error detected: Value null at '${name.charAt(0).toLowerCase() + name.slice(1)}' failed to satisfy constraint: Member must not be null`,
      );
    return undefined;
  }
  if (typeof v !== 'string') throw new AwsFault(400, 'SerializationException', `${name} must be a string`);
  return v;
}

function blob(input: Json, name: string): Buffer {
  const s = str(input, name)!;
  const b = Buffer.from(s, 'base64');
  if (b.length === 0)
    throw validation(
      `1 validation error detected: Value at '${name.charAt(0).toLowerCase() + name.slice(1)}' failed to satisfy constraint: Member must have length greater than or equal to 1`,
    );
  return b;
}

function hashOf(algorithm: string): HashName {
  if (algorithm.endsWith('SHA_256')) return 'sha256';
  if (algorithm.endsWith('SHA_384')) return 'sha384';
  return 'sha512';
}

export class DevKmsStore {
  private readonly keys = new Map<string, Key>();
  private readonly aliases = new Map<string, Alias>();

  constructor(readonly identity: DevKmsIdentity) {}

  private keyArn(id: string): string {
    return `arn:aws:kms:${this.identity.region}:${this.identity.accountId}:key/${id}`;
  }

  private aliasArn(name: string): string {
    return `arn:aws:kms:${this.identity.region}:${this.identity.accountId}:${name}`;
  }

  /** Key id, key ARN, alias name or alias ARN, as AWS KMS takes them. */
  private resolve(keyId: string): Key {
    const prefix = `arn:aws:kms:${this.identity.region}:${this.identity.accountId}:`;
    let id = keyId;
    if (id.startsWith('arn:')) {
      if (!id.startsWith(prefix)) throw new AwsFault(400, 'NotFoundException', `Invalid arn ${keyId}`);
      id = id.slice(prefix.length);
      if (id.startsWith('key/')) id = id.slice(4);
    }
    if (id.startsWith('alias/')) {
      const alias = this.aliases.get(id);
      const key = alias && this.keys.get(alias.keyId);
      if (!key) throw new AwsFault(400, 'NotFoundException', `Alias ${this.aliasArn(id)} is not found.`);
      return key;
    }
    const key = this.keys.get(id);
    if (!key) throw new AwsFault(400, 'NotFoundException', `Key '${this.keyArn(id)}' does not exist`);
    return key;
  }

  /** A key that may be used for a cryptographic operation now. */
  private usable(keyId: string, usage: KeyUsage, op: string): Key {
    const key = this.resolve(keyId);
    if (key.state === 'Disabled') throw new AwsFault(400, 'DisabledException', `${key.arn} is disabled.`);
    if (key.state === 'PendingDeletion') throw new AwsFault(400, 'KMSInvalidStateException', `${key.arn} is pending deletion.`);
    if (key.usage !== usage) {
      throw new AwsFault(
        400,
        'InvalidKeyUsageException',
        `You cannot perform this operation because the key usage of ${key.arn} is ${key.usage}. ${op} requires ${usage}.`,
      );
    }
    return key;
  }

  private metadata(key: Key): Json {
    const info = SPECS[key.spec]!;
    return {
      AWSAccountId: this.identity.accountId,
      KeyId: key.id,
      Arn: key.arn,
      CreationDate: key.created,
      Enabled: key.state === 'Enabled',
      Description: key.description,
      KeyUsage: key.usage,
      KeyState: key.state,
      ...(key.deletionDate ? { DeletionDate: key.deletionDate } : {}),
      Origin: 'AWS_KMS',
      KeyManager: 'CUSTOMER',
      CustomerMasterKeySpec: key.spec,
      KeySpec: key.spec,
      ...this.algorithms(key, info),
      MultiRegion: false,
    };
  }

  private algorithms(key: Key, info: SpecInfo): Json {
    if (key.usage === 'SIGN_VERIFY') return { SigningAlgorithms: info.signing };
    if (key.usage === 'ENCRYPT_DECRYPT') return { EncryptionAlgorithms: info.encryption };
    return { KeyAgreementAlgorithms: info.agreement };
  }

  /** Runs one operation; throws AwsFault for anything AWS would refuse. */
  handle(op: string, input: Json): Json {
    switch (op) {
      case 'CreateKey':
        return this.createKey(input);
      case 'CreateAlias':
        return this.createAlias(input);
      case 'DeleteAlias':
        return this.deleteAlias(input);
      case 'DescribeKey':
        return { KeyMetadata: this.metadata(this.resolve(str(input, 'KeyId')!)) };
      case 'GetPublicKey':
        return this.getPublicKey(input);
      case 'Sign':
        return this.sign(input);
      case 'Verify':
        return this.verify(input);
      case 'Decrypt':
        return this.decrypt(input);
      case 'DeriveSharedSecret':
        return this.deriveSharedSecret(input);
      case 'GenerateRandom':
        return this.generateRandom(input);
      case 'ListKeys':
        return this.listKeys(input);
      case 'ListAliases':
        return this.listAliases(input);
      case 'ScheduleKeyDeletion':
        return this.scheduleKeyDeletion(input);
      case 'DisableKey':
      case 'EnableKey': {
        const key = this.resolve(str(input, 'KeyId')!);
        if (key.state === 'PendingDeletion') throw new AwsFault(400, 'KMSInvalidStateException', `${key.arn} is pending deletion.`);
        key.state = op === 'EnableKey' ? 'Enabled' : 'Disabled';
        return {};
      }
      default:
        throw new AwsFault(400, 'UnknownOperationException', `the kmsbridge AWS KMS test double does not implement ${op}`);
    }
  }

  private createKey(input: Json): Json {
    const spec = str(input, 'KeySpec', false) ?? str(input, 'CustomerMasterKeySpec', false) ?? 'SYMMETRIC_DEFAULT';
    const info = SPECS[spec];
    if (!info)
      throw new AwsFault(400, 'UnsupportedOperationException', `KeySpec ${spec} is not supported by the kmsbridge AWS KMS test double (asymmetric keys only)`);
    const usage = (str(input, 'KeyUsage', false) ?? 'ENCRYPT_DECRYPT') as KeyUsage;
    if (!info.usages.includes(usage)) throw validation(`KeyUsage ${usage} is not compatible with KeySpec ${spec}`);
    const pair = info.generate();
    const id = crypto.randomUUID();
    const key: Key = {
      id,
      arn: this.keyArn(id),
      spec,
      usage,
      state: 'Enabled',
      description: str(input, 'Description', false) ?? '',
      created: Math.floor(Date.now() / 1000),
      privateKey: pair.privateKey,
      publicKey: pair.publicKey,
    };
    this.keys.set(id, key);
    return { KeyMetadata: this.metadata(key) };
  }

  private createAlias(input: Json): Json {
    const name = str(input, 'AliasName')!;
    if (!/^alias\/[a-zA-Z0-9/_-]{1,250}$/.test(name)) {
      throw validation(
        `1 validation error detected: Value '${name}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$`,
      );
    }
    if (name.startsWith('alias/aws/'))
      throw new AwsFault(400, 'NotAuthorizedException', 'Alias names starting with alias/aws/ are reserved for AWS managed keys.');
    if (this.aliases.has(name)) throw new AwsFault(400, 'AlreadyExistsException', `An alias with the name ${this.aliasArn(name)} already exists`);
    const target = str(input, 'TargetKeyId')!;
    if (target.startsWith('alias/')) throw validation('TargetKeyId must be a key id or key ARN, not an alias');
    const key = this.resolve(target);
    if (key.state === 'PendingDeletion') throw new AwsFault(400, 'KMSInvalidStateException', `${key.arn} is pending deletion.`);
    this.aliases.set(name, { name, keyId: key.id, created: Math.floor(Date.now() / 1000) });
    return {};
  }

  private deleteAlias(input: Json): Json {
    const name = str(input, 'AliasName')!;
    if (!this.aliases.delete(name)) throw new AwsFault(400, 'NotFoundException', `Alias ${this.aliasArn(name)} is not found.`);
    return {};
  }

  private getPublicKey(input: Json): Json {
    const key = this.resolve(str(input, 'KeyId')!);
    if (key.state === 'Disabled') throw new AwsFault(400, 'DisabledException', `${key.arn} is disabled.`);
    if (key.state === 'PendingDeletion') throw new AwsFault(400, 'KMSInvalidStateException', `${key.arn} is pending deletion.`);
    return {
      KeyId: key.arn,
      PublicKey: key.publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
      CustomerMasterKeySpec: key.spec,
      KeySpec: key.spec,
      KeyUsage: key.usage,
      ...this.algorithms(key, SPECS[key.spec]!),
    };
  }

  private signingInput(input: Json, op: string): { key: Key; algorithm: string; message: Buffer; digest: boolean } {
    const key = this.usable(str(input, 'KeyId')!, 'SIGN_VERIFY', op);
    const algorithm = str(input, 'SigningAlgorithm')!;
    if (!SPECS[key.spec]!.signing.includes(algorithm)) {
      throw new AwsFault(
        400,
        'InvalidKeyUsageException',
        `Signing algorithm ${algorithm} is not valid for ${key.arn}; it supports ${SPECS[key.spec]!.signing.join(', ')}.`,
      );
    }
    const messageType = str(input, 'MessageType', false) ?? 'RAW';
    if (messageType !== 'RAW' && messageType !== 'DIGEST') throw validation(`MessageType ${messageType} is not valid`);
    const message = blob(input, 'Message');
    if (algorithm === 'ED25519_SHA_512' && messageType !== 'RAW') throw validation('ED25519_SHA_512 requires MessageType RAW');
    if (messageType === 'RAW' && message.length > MAX_RAW_MESSAGE) {
      throw validation(
        `1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length less than or equal to ${MAX_RAW_MESSAGE}`,
      );
    }
    if (messageType === 'DIGEST' && !algorithm.startsWith('ED25519')) {
      const want = { sha256: 32, sha384: 48, sha512: 64 }[hashOf(algorithm)];
      if (message.length !== want) throw validation(`Digest is invalid length for algorithm ${algorithm}.`);
    }
    return { key, algorithm, message, digest: messageType === 'DIGEST' };
  }

  private sign(input: Json): Json {
    const { key, algorithm, message, digest: isDigest } = this.signingInput(input, 'Sign');
    if (algorithm === 'ED25519_PH_SHA_512') {
      throw new AwsFault(400, 'UnsupportedOperationException', 'the kmsbridge AWS KMS test double does not implement ED25519_PH_SHA_512');
    }
    let signature: Buffer;
    if (algorithm === 'ED25519_SHA_512') {
      signature = crypto.sign(null, message, key.privateKey);
    } else {
      const hash = hashOf(algorithm);
      const digest = isDigest ? message : crypto.createHash(hash).update(message).digest();
      if (algorithm.startsWith('RSASSA_PKCS1')) signature = rsaPkcs1SignDigest(key.privateKey, hash, digest);
      else if (algorithm.startsWith('RSASSA_PSS')) signature = rsaPssSignDigest(key.privateKey, hash, digest);
      else signature = ecdsaSignDigest(key.privateKey, CURVE_OF[key.spec]!, digest);
    }
    return { KeyId: key.arn, Signature: signature.toString('base64'), SigningAlgorithm: algorithm };
  }

  private verify(input: Json): Json {
    const { key, algorithm, message, digest: isDigest } = this.signingInput(input, 'Verify');
    const signature = blob(input, 'Signature');
    let valid: boolean;
    if (algorithm === 'ED25519_SHA_512') {
      valid = crypto.verify(null, message, key.publicKey, signature);
    } else if (algorithm === 'ED25519_PH_SHA_512') {
      throw new AwsFault(400, 'UnsupportedOperationException', 'the kmsbridge AWS KMS test double does not implement ED25519_PH_SHA_512');
    } else {
      const hash = hashOf(algorithm);
      const digest = isDigest ? message : crypto.createHash(hash).update(message).digest();
      if (algorithm.startsWith('RSASSA_PKCS1')) valid = rsaPkcs1VerifyDigest(key.publicKey, hash, digest, signature);
      else if (algorithm.startsWith('RSASSA_PSS')) valid = rsaPssVerifyDigest(key.publicKey, hash, digest, signature);
      else valid = ecdsaVerifyDigest(key.publicKey, CURVE_OF[key.spec]!, digest, signature);
    }
    if (!valid) throw new AwsFault(400, 'KMSInvalidSignatureException', 'The signature is not valid.');
    return { KeyId: key.arn, SignatureValid: true, SigningAlgorithm: algorithm };
  }

  private decrypt(input: Json): Json {
    const keyId = str(input, 'KeyId', false);
    if (!keyId) throw validation('KeyId is required to decrypt with an asymmetric key');
    const key = this.usable(keyId, 'ENCRYPT_DECRYPT', 'Decrypt');
    const algorithm = str(input, 'EncryptionAlgorithm', false) ?? 'SYMMETRIC_DEFAULT';
    if (!SPECS[key.spec]!.encryption.includes(algorithm)) {
      throw new AwsFault(
        400,
        'InvalidKeyUsageException',
        `Encryption algorithm ${algorithm} is not valid for ${key.arn}; it supports ${RSA_ENCRYPTION.join(', ')}.`,
      );
    }
    let plaintext: Buffer;
    try {
      plaintext = crypto.privateDecrypt(
        { key: key.privateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: algorithm === 'RSAES_OAEP_SHA_1' ? 'sha1' : 'sha256' },
        blob(input, 'CiphertextBlob'),
      );
    } catch {
      throw new AwsFault(400, 'InvalidCiphertextException', '');
    }
    return { KeyId: key.arn, Plaintext: plaintext.toString('base64'), EncryptionAlgorithm: algorithm };
  }

  private deriveSharedSecret(input: Json): Json {
    const key = this.usable(str(input, 'KeyId')!, 'KEY_AGREEMENT', 'DeriveSharedSecret');
    if (str(input, 'KeyAgreementAlgorithm') !== 'ECDH') throw validation('KeyAgreementAlgorithm must be ECDH');
    let peer: crypto.KeyObject;
    try {
      peer = crypto.createPublicKey({ key: blob(input, 'PublicKey'), format: 'der', type: 'spki' });
      return {
        KeyId: key.arn,
        SharedSecret: crypto.diffieHellman({ privateKey: key.privateKey, publicKey: peer }).toString('base64'),
        KeyAgreementAlgorithm: 'ECDH',
        KeyOrigin: 'AWS_KMS',
      };
    } catch {
      throw validation('PublicKey is not a valid SubjectPublicKeyInfo on the curve of the key');
    }
  }

  private generateRandom(input: Json): Json {
    const n = input.NumberOfBytes;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 1024) {
      throw validation(
        `1 validation error detected: Value '${String(n)}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024`,
      );
    }
    return { Plaintext: crypto.randomBytes(n).toString('base64') };
  }

  private page<T>(input: Json, items: T[]): { page: T[]; next: Json } {
    const limit = typeof input.Limit === 'number' ? input.Limit : 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw validation('Limit must be between 1 and 1000');
    const marker = str(input, 'Marker', false);
    const start = marker === undefined ? 0 : Number.parseInt(marker, 10);
    if (!Number.isInteger(start) || start < 0)
      throw new AwsFault(
        400,
        'InvalidMarkerException',
        'The request was rejected because the marker that specifies where pagination should next begin is not valid.',
      );
    const page = items.slice(start, start + limit);
    const more = start + limit < items.length;
    return { page, next: more ? { NextMarker: String(start + limit), Truncated: true } : { Truncated: false } };
  }

  private listKeys(input: Json): Json {
    const { page, next } = this.page(input, [...this.keys.values()]);
    return { Keys: page.map((k) => ({ KeyId: k.id, KeyArn: k.arn })), ...next };
  }

  private listAliases(input: Json): Json {
    const keyId = str(input, 'KeyId', false);
    const target = keyId === undefined ? undefined : this.resolve(keyId).id;
    const aliases = [...this.aliases.values()].filter((a) => target === undefined || a.keyId === target);
    const { page, next } = this.page(input, aliases);
    return {
      Aliases: page.map((a) => ({
        AliasName: a.name,
        AliasArn: this.aliasArn(a.name),
        TargetKeyId: a.keyId,
        CreationDate: a.created,
        LastUpdatedDate: a.created,
      })),
      ...next,
    };
  }

  private scheduleKeyDeletion(input: Json): Json {
    const key = this.resolve(str(input, 'KeyId')!);
    const days = input.PendingWindowInDays ?? 30;
    if (typeof days !== 'number' || !Number.isInteger(days) || days < 7 || days > 30) throw validation('PendingWindowInDays must be between 7 and 30');
    if (key.state === 'PendingDeletion') throw new AwsFault(400, 'KMSInvalidStateException', `${key.arn} is pending deletion.`);
    key.state = 'PendingDeletion';
    key.deletionDate = Math.floor(Date.now() / 1000) + days * 86400;
    return { KeyId: key.arn, DeletionDate: key.deletionDate, KeyState: key.state, PendingWindowInDays: days };
  }

  counts(): { keys: number; aliases: number } {
    return { keys: this.keys.size, aliases: this.aliases.size };
  }

  // ---- state, for --state files -----------------------------------------------------

  exportState(): DevKmsState {
    return {
      format: 'kmsbridge-dev-kms-state',
      version: 1,
      keys: [...this.keys.values()].map((k) => ({
        id: k.id,
        spec: k.spec,
        usage: k.usage,
        state: k.state,
        description: k.description,
        created: k.created,
        ...(k.deletionDate ? { deletionDate: k.deletionDate } : {}),
        pkcs8: k.privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
      })),
      aliases: [...this.aliases.values()],
    };
  }

  importState(state: DevKmsState): void {
    if (state.format !== 'kmsbridge-dev-kms-state' || state.version !== 1) throw new Error('not a kmsbridge dev-kms state file');
    for (const k of state.keys) {
      if (!SPECS[k.spec]) continue;
      const privateKey = crypto.createPrivateKey({ key: Buffer.from(k.pkcs8, 'base64'), format: 'der', type: 'pkcs8' });
      this.keys.set(k.id, {
        id: k.id,
        arn: this.keyArn(k.id),
        spec: k.spec,
        usage: k.usage,
        state: k.state,
        description: k.description,
        created: k.created,
        ...(k.deletionDate ? { deletionDate: k.deletionDate } : {}),
        privateKey,
        publicKey: crypto.createPublicKey(privateKey),
      });
    }
    for (const a of state.aliases) if (this.keys.has(a.keyId)) this.aliases.set(a.name, a);
  }
}
