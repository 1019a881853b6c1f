/**
 * Key-ids of a PKCS#11 keyring: the path attributes of an RFC 7512 URI that
 * pick one key on the keyring's token.
 *
 *   id=01              CKA_ID as hex, the way pkcs11-tool --id takes it
 *   id=%01%a2          CKA_ID percent-encoded, as RFC 7512 writes it
 *   label=web          CKA_LABEL (RFC 7512 calls it `object=`; both are accepted)
 *   id=%01;label=web   both must match
 *
 * A `pkcs11:` prefix, `type=private` and a `token=` naming the keyring's own
 * token are accepted too, so a URI copied from p11tool or pkcs11-tool works.
 * PINs never go in a key-id: they belong to the keyring's configuration.
 */
import { badRequest } from '../../errors.js';

export interface KeySelector {
  id?: Buffer;
  label?: string;
  /** A token label the key-id insists on; checked against the keyring's token. */
  token?: string;
}

const HINT = 'use id=<hex>, label=<name> or both, e.g. id=01;label=web';

function pctDecode(value: string, what: string): Buffer {
  const out: number[] = [];
  const utf8 = Buffer.from(value, 'utf8');
  for (let i = 0; i < utf8.length; i++) {
    const c = utf8[i]!;
    if (c !== 0x25) {
      out.push(c);
      continue;
    }
    const hex = utf8.subarray(i + 1, i + 3).toString('latin1');
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) throw badRequest(`bad percent-encoding in ${what} '${value}': '%' must be followed by two hex digits`);
    out.push(parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(out);
}

/** Parses a key-id; the message of any error says what a good one looks like. */
export function parseKeyId(keyId: string): KeySelector {
  let s = keyId;
  if (s.startsWith('pkcs11:')) s = s.slice('pkcs11:'.length);
  if (s.includes('?')) {
    throw badRequest(`key-id '${keyId}' has a query part: PINs and modules belong in the keyring config, not in the key-id; ${HINT}`);
  }
  const sel: KeySelector = {};
  for (const part of s.split(';')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw badRequest(`key-id '${keyId}': '${part}' is not attribute=value; ${HINT}`);
    const name = part.slice(0, eq).toLowerCase();
    const value = part.slice(eq + 1);
    if (value === '') throw badRequest(`key-id '${keyId}': ${name} is empty; ${HINT}`);
    const seen = (k: keyof KeySelector) => {
      if (sel[k] !== undefined) throw badRequest(`key-id '${keyId}' gives ${k} twice`);
    };
    switch (name) {
      case 'id':
        seen('id');
        // No '%' and only hex digits: hex, as pkcs11-tool prints and takes ids. Otherwise RFC 7512 percent-encoding.
        sel.id = !value.includes('%') && /^([0-9a-fA-F]{2})+$/.test(value) ? Buffer.from(value, 'hex') : pctDecode(value, 'id');
        break;
      case 'label':
      case 'object':
        seen('label');
        sel.label = pctDecode(value, name).toString('utf8');
        break;
      case 'token':
        seen('token');
        sel.token = pctDecode(value, 'token').toString('utf8');
        break;
      case 'type':
        if (value !== 'private') {
          throw badRequest(
            `key-id '${keyId}' asks for type=${value}: a kmsbridge key is the private key (type=private), its public half is read along with it`,
          );
        }
        break;
      default:
        throw badRequest(`key-id '${keyId}': attribute '${name}' is not supported; ${HINT}`);
    }
  }
  if (sel.id === undefined && sel.label === undefined) throw badRequest(`key-id '${keyId}' names no key; ${HINT}`);
  return sel;
}

/** Characters RFC 7512 lets stand in a path attribute value; everything else is percent-encoded. */
function pctEncode(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9_.~:@&+$,!'*()-]/.test(c) ? c : '%' + byte.toString(16).padStart(2, '0');
  }
  return out;
}

/** The key-id kmsbridge prints for a key: what parseKeyId reads back to the same selector. */
export function formatKeyId(sel: { id?: Buffer; label?: string }): string {
  const parts: string[] = [];
  if (sel.id && sel.id.length > 0) parts.push(`id=${sel.id.toString('hex')}`);
  if (sel.label) parts.push(`label=${pctEncode(sel.label)}`);
  return parts.join(';');
}

/** For messages: how a selector reads to a person. */
export function describeSelector(sel: KeySelector): string {
  const parts: string[] = [];
  if (sel.id !== undefined) parts.push(`CKA_ID ${sel.id.toString('hex') || '(empty)'}`);
  if (sel.label !== undefined) parts.push(`CKA_LABEL '${sel.label}'`);
  return parts.join(' and ');
}
