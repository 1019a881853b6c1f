import { badRequest } from './errors.js';

export interface KeyUri {
  /** The whole URI as given, `kms:<keyring>/<key-id>`. */
  readonly uri: string;
  readonly keyring: string;
  /** Backend-specific and taken verbatim: `web`, `id=01;label=web`, `alias/prod-tls`, `arn:aws:kms:…`. */
  readonly keyId: string;
}

const KEYRING_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const MAX_URI = 2048;

export function isKeyringName(name: string): boolean {
  return KEYRING_NAME.test(name);
}

/** Parses `kms:<keyring>/<key-id>`; the message says what is wrong and what a good URI looks like. */
export function parseKeyUri(uri: string): KeyUri {
  const hint = 'expected kms:<keyring>/<key-id>, e.g. kms:local/web';
  if (typeof uri !== 'string' || uri.length === 0) throw badRequest(`empty key URI: ${hint}`);
  if (uri.length > MAX_URI) throw badRequest(`key URI longer than ${MAX_URI} characters: ${hint}`);
  if (/[\u0000-\u001f\u007f]/.test(uri)) throw badRequest(`key URI contains control characters: ${hint}`);
  if (!uri.startsWith('kms:')) throw badRequest(`malformed key URI '${uri}': ${hint}`);
  const rest = uri.slice(4);
  const slash = rest.indexOf('/');
  if (slash < 0) throw badRequest(`malformed key URI '${uri}': no key-id after the keyring; ${hint}`);
  const keyring = rest.slice(0, slash);
  const keyId = rest.slice(slash + 1);
  if (!isKeyringName(keyring)) {
    throw badRequest(`malformed key URI '${uri}': keyring name '${keyring}' is not valid (letters, digits, '_', '.', '-'); ${hint}`);
  }
  if (keyId.length === 0) throw badRequest(`malformed key URI '${uri}': empty key-id; ${hint}`);
  return { uri, keyring, keyId };
}

export function formatKeyUri(keyring: string, keyId: string): string {
  return `kms:${keyring}/${keyId}`;
}
