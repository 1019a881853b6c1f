/**
 * The key-reference PEM (docs/wire-format.md): a PEM block that names a key
 * for tools that only take a key file. The C decoder (src-native/common/keyref.c)
 * reads what this writes.
 */
import { parseKeyUri } from './uri.js';

export const KEYREF_PEM_LABEL = 'KMSBRIDGE KEY URI';

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v >>= 8) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function derTlv(tag: number, value: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), derLength(value.length), value]);
}

/** DER of SEQUENCE { version INTEGER (0), uri UTF8String }. */
export function keyRefDer(uri: string): Buffer {
  parseKeyUri(uri);
  return derTlv(0x30, Buffer.concat([derTlv(0x02, Buffer.from([0])), derTlv(0x0c, Buffer.from(uri, 'utf8'))]));
}

export function keyRefPem(uri: string): string {
  const b64 = keyRefDer(uri).toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return (
    `kmsbridge key reference: ${uri}\n` +
    'The private key stays in the key manager; this file only names it.\n' +
    `-----BEGIN ${KEYREF_PEM_LABEL}-----\n${b64}\n-----END ${KEYREF_PEM_LABEL}-----\n`
  );
}
