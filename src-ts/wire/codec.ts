/**
 * The kmsbridge wire format, version 1 (docs/wire-format.md): length-prefixed
 * frames of tagged fields. The C core has the twin of this file
 * (src-native/common/wire.c); both are tested against test/golden/.
 */

export const PROTOCOL_VERSION = 1;
export const HEADER_SIZE = 12;
/** Largest value of the length prefix: the bytes that follow it. */
export const MAX_FRAME = 1024 * 1024;
export const MAX_STRING = 4096;
export const REPLY_BIT = 0x8000;

export enum MsgType {
  HELLO = 0x0001,
  PING = 0x0002,
  DESCRIBE = 0x0010,
  SIGN = 0x0011,
  DECRYPT = 0x0012,
  DERIVE = 0x0013,
  RANDOM = 0x0014,
  VERIFY = 0x0015,
  ENCRYPT = 0x0016,
  CREATE = 0x0020,
  LIST = 0x0021,
  DELETE = 0x0022,
}

export enum Tag {
  VERSION = 0x0001,
  PEER_NAME = 0x0002,
  MAX_FRAME = 0x0003,
  URI = 0x0010,
  KEYRING = 0x0011,
  NAME = 0x0012,
  KEY_SPEC = 0x0013,
  KEY_TYPE = 0x0020,
  BITS = 0x0021,
  CURVE = 0x0022,
  PUBLIC_KEY = 0x0023,
  ALGORITHMS = 0x0024,
  DIGESTS = 0x0025,
  MANDATORY_DIGEST = 0x0026,
  PSS_SALT = 0x0027,
  MAX_MESSAGE = 0x0028,
  ALGORITHM = 0x0030,
  DIGEST = 0x0031,
  MGF1_DIGEST = 0x0032,
  SALT_LENGTH = 0x0033,
  LABEL = 0x0034,
  DATA = 0x0035,
  PEER_KEY = 0x0036,
  LENGTH = 0x0037,
  SIGNATURE = 0x0038,
  RESULT = 0x0040,
  ENTRY = 0x0050,
  MESSAGE = 0x0060,
}

type Kind = 'u32' | 'string' | 'bytes' | 'nested';

const KIND: Record<Tag, Kind> = {
  [Tag.VERSION]: 'u32',
  [Tag.PEER_NAME]: 'string',
  [Tag.MAX_FRAME]: 'u32',
  [Tag.URI]: 'string',
  [Tag.KEYRING]: 'string',
  [Tag.NAME]: 'string',
  [Tag.KEY_SPEC]: 'string',
  [Tag.KEY_TYPE]: 'string',
  [Tag.BITS]: 'u32',
  [Tag.CURVE]: 'string',
  [Tag.PUBLIC_KEY]: 'bytes',
  [Tag.ALGORITHMS]: 'string',
  [Tag.DIGESTS]: 'string',
  [Tag.MANDATORY_DIGEST]: 'string',
  [Tag.PSS_SALT]: 'string',
  [Tag.MAX_MESSAGE]: 'u32',
  [Tag.ALGORITHM]: 'string',
  [Tag.DIGEST]: 'string',
  [Tag.MGF1_DIGEST]: 'string',
  [Tag.SALT_LENGTH]: 'u32',
  [Tag.LABEL]: 'bytes',
  [Tag.DATA]: 'bytes',
  [Tag.PEER_KEY]: 'bytes',
  [Tag.LENGTH]: 'u32',
  [Tag.SIGNATURE]: 'bytes',
  [Tag.RESULT]: 'bytes',
  [Tag.ENTRY]: 'nested',
  [Tag.MESSAGE]: 'string',
};

export type FieldValue = number | string | Buffer | Field[];
export interface Field {
  tag: Tag;
  value: FieldValue;
}
export interface Frame {
  id: number;
  type: number;
  status: number;
  fields: Field[];
}

/** A frame that breaks the format. The connection that carried it cannot be trusted any further. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

function kindOf(tag: number): Kind | undefined {
  return (KIND as Record<number, Kind | undefined>)[tag];
}

// ---- encoding -------------------------------------------------------------

function encodeValue(tag: Tag, value: FieldValue): Buffer {
  const kind = kindOf(tag);
  switch (kind) {
    case 'u32': {
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
        throw new ProtocolError(`field ${Tag[tag]} needs an unsigned 32-bit integer`);
      }
      const b = Buffer.alloc(4);
      b.writeUInt32BE(value);
      return b;
    }
    case 'string': {
      if (typeof value !== 'string') throw new ProtocolError(`field ${Tag[tag]} needs a string`);
      const b = Buffer.from(value, 'utf8');
      if (b.length > MAX_STRING || b.includes(0)) throw new ProtocolError(`field ${Tag[tag]}: string too long or contains NUL`);
      return b;
    }
    case 'bytes':
      if (!Buffer.isBuffer(value)) throw new ProtocolError(`field ${Tag[tag]} needs bytes`);
      return value;
    case 'nested':
      if (!Array.isArray(value)) throw new ProtocolError(`field ${Tag[tag]} needs nested fields`);
      return encodeFields(value, false);
    default:
      throw new ProtocolError(`unknown tag 0x${tag.toString(16)}`);
  }
}

function encodeFields(fields: Field[], allowNested: boolean): Buffer {
  const parts: Buffer[] = [];
  for (const f of fields) {
    if (!allowNested && kindOf(f.tag) === 'nested') throw new ProtocolError('nested fields may not nest further');
    const value = encodeValue(f.tag, f.value);
    const head = Buffer.alloc(6);
    head.writeUInt16BE(f.tag, 0);
    head.writeUInt32BE(value.length, 2);
    parts.push(head, value);
  }
  return Buffer.concat(parts);
}

export function encodeFrame(frame: Frame): Buffer {
  const body = encodeFields(frame.fields, true);
  const length = HEADER_SIZE - 4 + body.length;
  if (length > MAX_FRAME) throw new ProtocolError(`frame of ${length} bytes exceeds the ${MAX_FRAME}-byte limit`);
  const head = Buffer.alloc(HEADER_SIZE);
  head.writeUInt32BE(length, 0);
  head.writeUInt32BE(frame.id >>> 0, 4);
  head.writeUInt16BE(frame.type, 8);
  head.writeUInt16BE(frame.status, 10);
  return Buffer.concat([head, body]);
}

// ---- decoding -------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeFields(buf: Buffer, allowNested: boolean): Field[] {
  const fields: Field[] = [];
  const seen = new Set<number>();
  let off = 0;
  while (off < buf.length) {
    if (buf.length - off < 6) throw new ProtocolError('truncated field header');
    const tag = buf.readUInt16BE(off);
    const len = buf.readUInt32BE(off + 2);
    off += 6;
    if (len > buf.length - off) throw new ProtocolError(`field 0x${tag.toString(16)} runs past the end of the frame`);
    const raw = buf.subarray(off, off + len);
    off += len;
    const kind = kindOf(tag);
    if (kind === undefined) continue; // unknown tags are skipped: later versions may add fields
    if (kind !== 'nested' || !allowNested) {
      if (seen.has(tag)) throw new ProtocolError(`duplicate field ${Tag[tag]}`);
    }
    seen.add(tag);
    let value: FieldValue;
    switch (kind) {
      case 'u32':
        if (len !== 4) throw new ProtocolError(`field ${Tag[tag]} must be 4 bytes, not ${len}`);
        value = raw.readUInt32BE(0);
        break;
      case 'string':
        if (len > MAX_STRING) throw new ProtocolError(`field ${Tag[tag]} is longer than ${MAX_STRING} bytes`);
        if (raw.includes(0)) throw new ProtocolError(`field ${Tag[tag]} contains a NUL byte`);
        try {
          value = utf8.decode(raw);
        } catch {
          throw new ProtocolError(`field ${Tag[tag]} is not valid UTF-8`);
        }
        break;
      case 'bytes':
        value = Buffer.from(raw);
        break;
      case 'nested':
        if (!allowNested) throw new ProtocolError('nested fields may not nest further');
        value = decodeFields(raw, false);
        break;
    }
    fields.push({ tag: tag as Tag, value });
  }
  return fields;
}

/** Decodes one whole frame, length prefix included. */
export function decodeFrame(buf: Buffer): Frame {
  if (buf.length < HEADER_SIZE) throw new ProtocolError('truncated frame header');
  const length = buf.readUInt32BE(0);
  checkLength(length);
  if (buf.length !== length + 4) throw new ProtocolError(`frame length ${length} does not match the ${buf.length - 4} bytes given`);
  return {
    id: buf.readUInt32BE(4),
    type: buf.readUInt16BE(8),
    status: buf.readUInt16BE(10),
    fields: decodeFields(buf.subarray(HEADER_SIZE), true),
  };
}

function checkLength(length: number): void {
  if (length < HEADER_SIZE - 4) throw new ProtocolError(`frame length ${length} is shorter than a header`);
  if (length > MAX_FRAME) throw new ProtocolError(`frame length ${length} exceeds the ${MAX_FRAME}-byte limit`);
}

/** Cuts a byte stream into frames. Throws ProtocolError as soon as a length prefix is out of bounds. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;

  push(chunk: Buffer): Frame[] {
    return this.pushRaw(chunk).map(decodeFrame);
  }

  /** The complete frames, still encoded (a bad length prefix throws; decodeFrame checks the rest). */
  pushRaw(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const frames: Buffer[] = [];
    for (;;) {
      if (this.size < 4) break;
      const head = this.peek(4);
      const length = head.readUInt32BE(0);
      checkLength(length);
      if (this.size < length + 4) break;
      frames.push(this.take(length + 4));
    }
    return frames;
  }

  get buffered(): number {
    return this.size;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.size = rest.length;
    return out;
  }
}

// ---- canonical dump (the golden-vector notation) ---------------------------

export function typeName(type: number): string {
  const base = type & ~REPLY_BIT;
  const name = MsgType[base];
  if (name === undefined) return `0x${type.toString(16).padStart(4, '0')}`;
  return type & REPLY_BIT ? `${name}_REPLY` : name;
}

function quote(s: string): string {
  let out = '"';
  for (const byte of Buffer.from(s, 'utf8')) {
    if (byte === 0x22) out += '\\"';
    else if (byte === 0x5c) out += '\\\\';
    else if (byte < 0x20 || byte > 0x7e) out += `\\x${byte.toString(16).padStart(2, '0')}`;
    else out += String.fromCharCode(byte);
  }
  return out + '"';
}

function dumpFields(fields: Field[]): string {
  return fields
    .map((f) => {
      const name = Tag[f.tag];
      const v = f.value;
      if (typeof v === 'number') return `${name}=${v}`;
      if (typeof v === 'string') return `${name}=${quote(v)}`;
      if (Buffer.isBuffer(v)) return `${name}=hex:${v.toString('hex')}`;
      return `${name}{${dumpFields(v)}}`;
    })
    .join(' ');
}

export function dumpFrame(frame: Frame): string {
  const head = `id=${frame.id} type=${typeName(frame.type)} status=${frame.status}`;
  return frame.fields.length ? `${head} ${dumpFields(frame.fields)}` : head;
}
