import { badRequest } from '../errors.js';
import type { KeyDescription, KeySummary } from '../types.js';
import { Tag, type Field, type FieldValue } from './codec.js';

/** Typed access to a frame's fields; a missing or mistyped field is a BAD_REQUEST naming it. */
export class Fields {
  private readonly map = new Map<Tag, FieldValue>();

  constructor(readonly list: Field[]) {
    for (const f of list) if (f.tag !== Tag.ENTRY) this.map.set(f.tag, f.value);
  }

  has(tag: Tag): boolean {
    return this.map.has(tag);
  }

  string(tag: Tag): string | undefined {
    const v = this.map.get(tag);
    return typeof v === 'string' ? v : undefined;
  }

  u32(tag: Tag): number | undefined {
    const v = this.map.get(tag);
    return typeof v === 'number' ? v : undefined;
  }

  bytes(tag: Tag): Buffer | undefined {
    const v = this.map.get(tag);
    return Buffer.isBuffer(v) ? v : undefined;
  }

  requireString(tag: Tag): string {
    const v = this.string(tag);
    if (v === undefined) throw badRequest(`request lacks the ${Tag[tag]} field`);
    return v;
  }

  requireU32(tag: Tag): number {
    const v = this.u32(tag);
    if (v === undefined) throw badRequest(`request lacks the ${Tag[tag]} field`);
    return v;
  }

  requireBytes(tag: Tag): Buffer {
    const v = this.bytes(tag);
    if (v === undefined) throw badRequest(`request lacks the ${Tag[tag]} field`);
    return v;
  }

  entries(): Fields[] {
    return this.list.filter((f) => f.tag === Tag.ENTRY).map((f) => new Fields(f.value as Field[]));
  }
}

export function describeToFields(d: KeyDescription): Field[] {
  const f: Field[] = [
    { tag: Tag.URI, value: d.uri },
    { tag: Tag.KEY_TYPE, value: d.keyType },
    { tag: Tag.BITS, value: d.bits },
  ];
  if (d.curve) f.push({ tag: Tag.CURVE, value: d.curve });
  f.push({ tag: Tag.PUBLIC_KEY, value: d.publicKey }, { tag: Tag.ALGORITHMS, value: d.algorithms.join(',') }, { tag: Tag.DIGESTS, value: d.digests.join(',') });
  if (d.mandatoryDigest) f.push({ tag: Tag.MANDATORY_DIGEST, value: d.mandatoryDigest });
  f.push({ tag: Tag.PSS_SALT, value: d.pssSalt });
  if (d.maxMessage !== undefined) f.push({ tag: Tag.MAX_MESSAGE, value: d.maxMessage });
  return f;
}

const list = (s: string | undefined) => (s ? s.split(',').filter(Boolean) : []);

export function fieldsToDescribe(f: Fields): KeyDescription {
  const curve = f.string(Tag.CURVE);
  const mandatory = f.string(Tag.MANDATORY_DIGEST);
  const maxMessage = f.u32(Tag.MAX_MESSAGE);
  return {
    uri: f.requireString(Tag.URI),
    keyType: f.requireString(Tag.KEY_TYPE) as KeyDescription['keyType'],
    bits: f.requireU32(Tag.BITS),
    ...(curve ? { curve: curve as KeyDescription['curve'] } : {}),
    publicKey: f.requireBytes(Tag.PUBLIC_KEY),
    algorithms: list(f.string(Tag.ALGORITHMS)) as KeyDescription['algorithms'],
    digests: list(f.string(Tag.DIGESTS)) as KeyDescription['digests'],
    ...(mandatory ? { mandatoryDigest: mandatory as KeyDescription['mandatoryDigest'] } : {}),
    pssSalt: (f.string(Tag.PSS_SALT) ?? 'any') as KeyDescription['pssSalt'],
    ...(maxMessage !== undefined ? { maxMessage } : {}),
  };
}

export function summaryToEntry(k: KeySummary): Field {
  const value: Field[] = [
    { tag: Tag.URI, value: k.uri },
    { tag: Tag.KEY_TYPE, value: k.keyType },
    { tag: Tag.BITS, value: k.bits },
  ];
  if (k.curve) value.push({ tag: Tag.CURVE, value: k.curve });
  return { tag: Tag.ENTRY, value };
}

export function entryToSummary(f: Fields): KeySummary {
  const curve = f.string(Tag.CURVE);
  return {
    uri: f.requireString(Tag.URI),
    keyType: f.requireString(Tag.KEY_TYPE) as KeySummary['keyType'],
    bits: f.requireU32(Tag.BITS),
    ...(curve ? { curve: curve as KeySummary['curve'] } : {}),
  };
}
