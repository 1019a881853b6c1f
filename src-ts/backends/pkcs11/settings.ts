/**
 * The settings of a `type = "pkcs11"` keyring, read from its TOML table, and
 * where its PIN comes from: pin_env, pin_file (0600/0400, owned by this user
 * or root, read again at each login) or pin in the config (development only:
 * warned about at every start).
 */
import fs from 'node:fs';
import { ErrorCode, KmsError } from '../../errors.js';
import type { KeyringConfig } from '../../config.js';
import type { PinSource } from './token.js';

const DEFAULT_MAX_SESSIONS = 8;

export interface Pkcs11Settings {
  library: string;
  tokenLabel?: string;
  slot?: number;
  maxSessions: number;
  pin?: PinSource;
}

/** |warn|: say so when the PIN is written in the config (once per keyring: the token thread does not). */
export function settingsOf(cfg: KeyringConfig, warn = true): Pkcs11Settings {
  const t = cfg.settings;
  const where = `[keyrings.${cfg.name}]`;
  const bad = (what: string) => new KmsError(ErrorCode.BAD_REQUEST, `config ${where}: ${what}`);
  const str = (key: string): string | undefined => {
    const v = t[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.length === 0) throw bad(`${key} must be a non-empty string`);
    return v;
  };
  const int = (key: string, min: number, max: number): number | undefined => {
    const raw = t[key];
    if (raw === undefined) return undefined;
    const v = typeof raw === 'bigint' ? Number(raw) : raw;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(`${key} must be a whole number from ${min} to ${max}`);
    return v;
  };
  const library = str('library');
  if (!library) throw bad('library is missing: give the path of the PKCS#11 module, e.g. library = "/usr/lib/softhsm/libsofthsm2.so"');
  const tokenLabel = str('token_label');
  const slot = int('slot', 0, 0xffffffff);
  if (tokenLabel !== undefined && slot !== undefined) throw bad('give token_label or slot, not both (token_label is preferred: it survives reconfiguration)');
  if (tokenLabel === undefined && slot === undefined) throw bad('name the token: token_label = "<label>" (or slot = <n>)');
  const maxSessions = int('max_sessions', 1, 1024) ?? DEFAULT_MAX_SESSIONS;

  const pinEnv = str('pin_env');
  const pinFile = str('pin_file');
  const pinValue = t.pin;
  const given = [pinEnv, pinFile, pinValue].filter((v) => v !== undefined).length;
  if (given > 1) throw bad('give one of pin_env, pin_file and pin');
  let pin: PinSource | undefined;
  if (pinEnv !== undefined) pin = envPin(pinEnv, cfg.name);
  else if (pinFile !== undefined) pin = filePin(pinFile, cfg.name);
  else if (pinValue !== undefined) {
    if (typeof pinValue !== 'string' || pinValue.length === 0) throw bad('pin must be a non-empty string');
    if (warn)
      process.stderr.write(
        `kmsbridge: WARNING: keyring '${cfg.name}' has its PKCS#11 PIN written in the config file (pin = …): anyone who can read the config can use the token's keys. ` +
          `Use pin_env or pin_file (mode 0600) outside development.\n`,
      );
    pin = { origin: `pin in ${where}`, rereadable: false, read: () => pinValue };
  }
  return { library, maxSessions, pin, ...(tokenLabel !== undefined ? { tokenLabel } : {}), ...(slot !== undefined ? { slot } : {}) };
}

function envPin(name: string, keyring: string): PinSource {
  const origin = `environment variable ${name} (pin_env of [keyrings.${keyring}])`;
  return {
    origin,
    rereadable: false,
    read: () => {
      const v = process.env[name];
      if (v === undefined || v.length === 0)
        throw new KmsError(ErrorCode.ACCESS_DENIED, `${origin} is not set in the environment of the agent; set it where the agent starts`);
      return v;
    },
  };
}

function filePin(file: string, keyring: string): PinSource {
  const origin = `pin_file ${file}`;
  return {
    origin,
    rereadable: true,
    read: () => {
      let st: fs.Stats;
      try {
        st = fs.statSync(file);
      } catch {
        throw new KmsError(ErrorCode.ACCESS_DENIED, `${origin} of keyring '${keyring}' cannot be read; check the path`);
      }
      const uid = process.getuid?.() ?? 0;
      if (st.uid !== uid && st.uid !== 0) {
        throw new KmsError(ErrorCode.ACCESS_DENIED, `${origin} belongs to uid ${st.uid}, not to this user (uid ${uid}) or root; chown it`);
      }
      if ((st.mode & 0o077) !== 0) {
        const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
        throw new KmsError(ErrorCode.ACCESS_DENIED, `${origin} has mode ${mode}, readable by other users; run: chmod 600 ${file}`);
      }
      const text = fs.readFileSync(file, 'utf8').replace(/\r?\n$/, '');
      if (text.length === 0) throw new KmsError(ErrorCode.ACCESS_DENIED, `${origin} of keyring '${keyring}' is empty`);
      return text;
    },
  };
}
