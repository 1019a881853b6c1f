/** Public-key formats for `keys export`: PEM, DER and the OpenSSH line (RFC 4253, 5656, 8709). */
import crypto from 'node:crypto';
import type { KeyDescription } from './types.js';

export type ExportFormat = 'pem' | 'der' | 'openssh';
export const EXPORT_FORMATS: ExportFormat[] = ['pem', 'der', 'openssh'];

function sshString(b: Buffer | string): Buffer {
  const data = typeof b === 'string' ? Buffer.from(b) : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  return Buffer.concat([len, data]);
}

/** An SSH mpint: big-endian, minimal, with a leading zero byte when the top bit is set. */
function sshMpint(b64url: string): Buffer {
  let v = Buffer.from(b64url, 'base64url');
  let i = 0;
  while (i < v.length - 1 && v[i] === 0) i++;
  v = v.subarray(i);
  if (v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
  return sshString(v);
}

const SSH_CURVE: Record<string, string> = { 'P-256': 'nistp256', 'P-384': 'nistp384', 'P-521': 'nistp521' };

export function openSshLine(d: KeyDescription, comment: string): string {
  const jwk = crypto.createPublicKey({ key: d.publicKey, format: 'der', type: 'spki' }).export({ format: 'jwk' });
  let type: string;
  let blob: Buffer;
  if (d.keyType === 'rsa') {
    type = 'ssh-rsa';
    blob = Buffer.concat([sshString(type), sshMpint(jwk.e!), sshMpint(jwk.n!)]);
  } else if (d.keyType === 'ec') {
    const curve = SSH_CURVE[d.curve!]!;
    type = `ecdsa-sha2-${curve}`;
    const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
    blob = Buffer.concat([sshString(type), sshString(curve), sshString(point)]);
  } else {
    type = 'ssh-ed25519';
    blob = Buffer.concat([sshString(type), sshString(Buffer.from(jwk.x!, 'base64url'))]);
  }
  return `${type} ${blob.toString('base64')} ${comment}\n`;
}

export function exportPublicKey(d: KeyDescription, format: ExportFormat): Buffer {
  if (format === 'der') return d.publicKey;
  if (format === 'pem') {
    const b64 = d.publicKey.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
    return Buffer.from(`-----BEGIN PUBLIC KEY-----\n${b64}\n-----END PUBLIC KEY-----\n`);
  }
  return Buffer.from(openSshLine(d, d.uri));
}
