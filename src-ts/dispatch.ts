/**
 * Turns request frames into KeyService calls and their results into reply
 * frames. Both doors use it: the agent socket and the in-process worker.
 */
import { ErrorCode, KmsError, asKmsError, badRequest } from './errors.js';
import type { KeyService, Peer } from './keyservice.js';
import type { AuditSink } from './audit.js';
import { parseKeyUri } from './uri.js';
import { MAX_FRAME, MsgType, PROTOCOL_VERSION, REPLY_BIT, Tag, type Field, type Frame } from './wire/codec.js';
import { Fields, describeToFields, summaryToEntry } from './wire/fields.js';
import {
  DECRYPT_ALGORITHMS,
  SIGN_ALGORITHMS,
  isDigest,
  type DecryptAlgorithm,
  type DecryptRequest,
  type Digest,
  type SignAlgorithm,
  type SignRequest,
} from './types.js';

export const SERVER_NAME = 'kmsbridge-agent/0.1.0';

export function errorReply(req: Pick<Frame, 'id' | 'type'>, err: KmsError): Frame {
  return { id: req.id, type: req.type | REPLY_BIT, status: err.code, fields: [{ tag: Tag.MESSAGE, value: err.message.slice(0, 4000) }] };
}

function digestField(f: Fields, tag: Tag): Digest | undefined {
  const v = f.string(tag);
  if (v === undefined) return undefined;
  if (!isDigest(v)) throw new KmsError(ErrorCode.UNSUPPORTED, `digest '${v}' is not supported (sha1, sha224, sha256, sha384, sha512)`);
  return v;
}

export interface DispatchOptions {
  audit?: AuditSink;
  /** The uid whose keys these are: peers with it may use every keyring. */
  ownUid: number;
}

export class Dispatcher {
  constructor(
    private readonly ks: KeyService,
    private readonly opts: DispatchOptions,
  ) {}

  /** Answers HELLO, or throws a KmsError for a bad one. */
  hello(req: Frame): Frame {
    if (req.type !== MsgType.HELLO) throw badRequest('the first request on a connection must be HELLO');
    const version = new Fields(req.fields).u32(Tag.VERSION);
    if (version !== PROTOCOL_VERSION) {
      throw badRequest(`protocol version ${version ?? 'missing'} is not supported; this agent speaks version ${PROTOCOL_VERSION}`);
    }
    return {
      id: req.id,
      type: req.type | REPLY_BIT,
      status: 0,
      fields: [
        { tag: Tag.VERSION, value: PROTOCOL_VERSION },
        { tag: Tag.PEER_NAME, value: SERVER_NAME },
        { tag: Tag.MAX_FRAME, value: MAX_FRAME },
      ],
    };
  }

  /** Never throws: every failure becomes an error reply. */
  async handle(req: Frame, peer: Peer): Promise<Frame> {
    const started = process.hrtime.bigint();
    const f = new Fields(req.fields);
    // A CREATE names its key by keyring and name: audit it under the URI it will have.
    const created = req.type === MsgType.CREATE ? f.string(Tag.NAME) : undefined;
    const uri = f.string(Tag.URI) ?? (created !== undefined ? `kms:${f.string(Tag.KEYRING) ?? ''}/${created}` : undefined);
    let outcome = 'ok';
    try {
      const fields = await this.run(req.type, f, peer);
      return { id: req.id, type: req.type | REPLY_BIT, status: 0, fields };
    } catch (err) {
      const e = asKmsError(err);
      outcome = e.codeName;
      return errorReply(req, e);
    } finally {
      if (this.opts.audit && req.type !== MsgType.PING && req.type !== MsgType.HELLO) {
        const alg = f.string(Tag.ALGORITHM);
        const digest = f.string(Tag.DIGEST);
        const keyring = f.string(Tag.KEYRING);
        const length = f.u32(Tag.LENGTH);
        this.opts.audit({
          time: new Date().toISOString(),
          pid: peer.pid,
          uid: peer.uid,
          ...(uri !== undefined ? { uri } : {}),
          ...(keyring !== undefined ? { keyring } : {}),
          op: opName(req.type),
          ...(alg !== undefined ? { alg } : {}),
          ...(digest !== undefined ? { digest } : {}),
          ...(length !== undefined ? { length } : {}),
          outcome,
          ms: Number(process.hrtime.bigint() - started) / 1e6,
        });
      }
    }
  }

  private authorize(keyring: string, peer: Peer): void {
    if (!this.ks.mayUse(keyring, peer, this.opts.ownUid)) {
      throw new KmsError(
        ErrorCode.ACCESS_DENIED,
        `uid ${peer.uid} may not use keyring '${keyring}'; the agent's owner can allow it with allow_uids = [${peer.uid}] in [keyrings.${keyring}]`,
      );
    }
  }

  private keyUri(f: Fields, peer: Peer): string {
    const uri = f.requireString(Tag.URI);
    this.authorize(parseKeyUri(uri).keyring, peer);
    return uri;
  }

  private async run(type: number, f: Fields, peer: Peer): Promise<Field[]> {
    switch (type) {
      case MsgType.PING:
        return [];
      case MsgType.DESCRIBE:
        return describeToFields(await this.ks.describe(this.keyUri(f, peer)));
      case MsgType.SIGN: {
        const uri = this.keyUri(f, peer);
        return [{ tag: Tag.RESULT, value: await this.ks.sign(uri, signRequest(f)) }];
      }
      case MsgType.VERIFY: {
        const uri = this.keyUri(f, peer);
        await this.ks.verify(uri, { ...signRequest(f), signature: f.requireBytes(Tag.SIGNATURE) });
        return [];
      }
      case MsgType.DECRYPT: {
        const uri = this.keyUri(f, peer);
        return [{ tag: Tag.RESULT, value: await this.ks.decrypt(uri, decryptRequest(f, 'decryption')) }];
      }
      case MsgType.ENCRYPT: {
        const uri = this.keyUri(f, peer);
        return [{ tag: Tag.RESULT, value: await this.ks.encrypt(uri, decryptRequest(f, 'encryption')) }];
      }
      case MsgType.DERIVE: {
        const uri = this.keyUri(f, peer);
        return [{ tag: Tag.RESULT, value: await this.ks.derive(uri, f.requireBytes(Tag.PEER_KEY)) }];
      }
      case MsgType.RANDOM: {
        const keyring = f.string(Tag.KEYRING) ?? this.ks.keyringNames()[0];
        if (keyring !== undefined) this.authorize(keyring, peer);
        return [{ tag: Tag.RESULT, value: await this.ks.random(f.requireU32(Tag.LENGTH), keyring) }];
      }
      case MsgType.CREATE: {
        const keyring = f.requireString(Tag.KEYRING);
        this.authorize(keyring, peer);
        return describeToFields(await this.ks.create(keyring, f.requireString(Tag.NAME), f.requireString(Tag.KEY_SPEC)));
      }
      case MsgType.LIST: {
        const keyring = f.string(Tag.KEYRING);
        const names = keyring ? [keyring] : this.ks.keyringNames().filter((k) => this.ks.mayUse(k, peer, this.opts.ownUid));
        if (keyring) this.authorize(keyring, peer);
        const out: Field[] = [];
        for (const name of names) for (const k of await this.ks.list(name)) out.push(summaryToEntry(k));
        return out;
      }
      case MsgType.DELETE:
        await this.ks.delete(this.keyUri(f, peer));
        return [];
      case MsgType.HELLO:
        throw badRequest('HELLO was already exchanged on this connection');
      default:
        throw badRequest(`unknown message type 0x${type.toString(16)}`);
    }
  }
}

/** The fields SIGN and VERIFY share. */
function signRequest(f: Fields): SignRequest {
  const algorithm = f.requireString(Tag.ALGORITHM);
  if (!(SIGN_ALGORITHMS as readonly string[]).includes(algorithm)) {
    throw new KmsError(ErrorCode.UNSUPPORTED, `signature algorithm '${algorithm}' is not one of ${SIGN_ALGORITHMS.join(', ')}`);
  }
  const digest = digestField(f, Tag.DIGEST);
  const mgf1Digest = digestField(f, Tag.MGF1_DIGEST);
  const saltLength = f.u32(Tag.SALT_LENGTH);
  return {
    algorithm: algorithm as SignAlgorithm,
    ...(digest ? { digest } : {}),
    ...(mgf1Digest ? { mgf1Digest } : {}),
    ...(saltLength !== undefined ? { saltLength } : {}),
    data: f.requireBytes(Tag.DATA),
  };
}

/** The fields DECRYPT and ENCRYPT share (ENCRYPT's DATA is the plaintext). */
function decryptRequest(f: Fields, what: string): DecryptRequest {
  const algorithm = f.requireString(Tag.ALGORITHM);
  if (!(DECRYPT_ALGORITHMS as readonly string[]).includes(algorithm)) {
    throw new KmsError(ErrorCode.UNSUPPORTED, `${what} algorithm '${algorithm}' is not one of ${DECRYPT_ALGORITHMS.join(', ')}`);
  }
  const digest = digestField(f, Tag.DIGEST);
  const mgf1Digest = digestField(f, Tag.MGF1_DIGEST);
  const label = f.bytes(Tag.LABEL);
  return {
    algorithm: algorithm as DecryptAlgorithm,
    ...(digest ? { digest } : {}),
    ...(mgf1Digest ? { mgf1Digest } : {}),
    ...(label ? { label } : {}),
    data: f.requireBytes(Tag.DATA),
  };
}

function opName(type: number): string {
  return (MsgType[type] ?? `0x${type.toString(16)}`).toLowerCase();
}
