import fs from 'node:fs';
import { ErrorCode, KmsError, badRequest } from './errors.js';
import { configCandidates, defaultAgentSocket, defaultLocalStore } from './paths.js';
import { isKeyringName } from './uri.js';

// smol-toml ships a CommonJS build, but its typings are ESM-only; require it with the one signature we use.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { parse: parseToml } = require('smol-toml') as { parse: (text: string) => unknown };

export const BACKEND_TYPES = ['local', 'pkcs11', 'aws'] as const;
export type BackendType = (typeof BACKEND_TYPES)[number];

export interface KeyringConfig {
  name: string;
  type: BackendType;
  /** Bound on every backend call, in milliseconds. */
  timeoutMs: number;
  allowSha1: boolean;
  allowPkcs1Decrypt: boolean;
  /** Peers besides the agent's own uid that may use this keyring. */
  allowUids: number[];
  allowGids: number[];
  /** Delay added before every backend call: simulates a remote key manager for benchmarks and tests. */
  injectLatencyMs: number;
  /** The keyring's table as written, for the backend's own settings. */
  settings: Record<string, unknown>;
}

export interface AgentConfig {
  socket: string;
  /** A file path, or 'stderr'. */
  auditLog: string;
  allowUids: number[];
  allowGids: number[];
}

export interface Config {
  /** The file it came from, or undefined for the built-in default. */
  source?: string;
  agent: AgentConfig;
  keyrings: Map<string, KeyringConfig>;
}

const DEFAULT_TIMEOUT_MS = 10_000;

function fail(source: string, what: string): never {
  throw new KmsError(ErrorCode.BAD_REQUEST, `config ${source}: ${what}`);
}

function table(v: unknown, source: string, where: string): Record<string, unknown> {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(source, `[${where}] must be a table`);
  return v as Record<string, unknown>;
}

function str(t: Record<string, unknown>, key: string, source: string, where: string): string | undefined {
  const v = t[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0) fail(source, `${where}.${key} must be a non-empty string`);
  return v;
}

function bool(t: Record<string, unknown>, key: string, source: string, where: string, dflt: boolean): boolean {
  const v = t[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') fail(source, `${where}.${key} must be true or false`);
  return v;
}

function int(t: Record<string, unknown>, key: string, source: string, where: string, dflt: number, min: number, max: number): number {
  const v = t[key];
  if (v === undefined) return dflt;
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    fail(source, `${where}.${key} must be a whole number from ${min} to ${max}`);
  }
  return n;
}

function ids(t: Record<string, unknown>, key: string, source: string, where: string): number[] {
  const v = t[key];
  if (v === undefined) return [];
  if (!Array.isArray(v)) fail(source, `${where}.${key} must be a list of numeric ids`);
  return v.map((x) => {
    const n = typeof x === 'bigint' ? Number(x) : x;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) fail(source, `${where}.${key} must hold numeric ids`);
    return n;
  });
}

function keyring(name: string, raw: unknown, source: string): KeyringConfig {
  const where = `keyrings.${name}`;
  if (!isKeyringName(name)) fail(source, `keyring name '${name}' is not valid (letters, digits, '_', '.', '-')`);
  const t = table(raw, source, where);
  const type = str(t, 'type', source, where) ?? 'local';
  if (!(BACKEND_TYPES as readonly string[]).includes(type)) {
    fail(source, `${where}.type '${type}' is not one of ${BACKEND_TYPES.join(', ')}`);
  }
  return {
    name,
    type: type as BackendType,
    timeoutMs: int(t, 'timeout_ms', source, where, DEFAULT_TIMEOUT_MS, 1, 600_000),
    allowSha1: bool(t, 'allow_sha1', source, where, false),
    allowPkcs1Decrypt: bool(t, 'allow_pkcs1_decrypt', source, where, false),
    allowUids: ids(t, 'allow_uids', source, where),
    allowGids: ids(t, 'allow_gids', source, where),
    injectLatencyMs: int(t, 'inject_latency_ms', source, where, 0, 0, 600_000),
    settings: t,
  };
}

export function defaultLocalKeyring(): KeyringConfig {
  return {
    name: 'local',
    type: 'local',
    timeoutMs: DEFAULT_TIMEOUT_MS,
    allowSha1: false,
    allowPkcs1Decrypt: false,
    allowUids: [],
    allowGids: [],
    injectLatencyMs: 0,
    settings: { type: 'local', path: defaultLocalStore() },
  };
}

export function parseConfig(text: string, source: string): Config {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
    fail(source, `not valid TOML: ${msg}`);
  }
  for (const key of Object.keys(doc)) {
    if (key !== 'agent' && key !== 'keyrings') fail(source, `unknown section [${key}] (expected [agent] and [keyrings.<name>])`);
  }
  const agentT = table(doc.agent, source, 'agent');
  const agent: AgentConfig = {
    socket: str(agentT, 'socket', source, 'agent') ?? defaultAgentSocket(),
    auditLog: str(agentT, 'audit_log', source, 'agent') ?? 'stderr',
    allowUids: ids(agentT, 'allow_uids', source, 'agent'),
    allowGids: ids(agentT, 'allow_gids', source, 'agent'),
  };
  const keyrings = new Map<string, KeyringConfig>();
  for (const [name, raw] of Object.entries(table(doc.keyrings, source, 'keyrings'))) {
    keyrings.set(name, keyring(name, raw, source));
  }
  // With no keyrings configured, the embedded default still exists.
  if (keyrings.size === 0) keyrings.set('local', defaultLocalKeyring());
  return { source, agent, keyrings };
}

/** Loads the first config file that exists (KMSBRIDGE_CONFIG must exist if set); none at all gives the default. */
export function loadConfig(explicitPath?: string): Config {
  const candidates = explicitPath ? [explicitPath] : configCandidates();
  const mustExist = Boolean(explicitPath || process.env.KMSBRIDGE_CONFIG);
  for (const file of candidates) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' && !mustExist) continue;
      if (code === 'ENOENT') throw badRequest(`config file ${file} does not exist (set by ${explicitPath ? '--config' : 'KMSBRIDGE_CONFIG'})`);
      throw badRequest(`config file ${file} cannot be read: ${(err as Error).message}`);
    }
    return parseConfig(text, file);
  }
  return {
    agent: { socket: defaultAgentSocket(), auditLog: 'stderr', allowUids: [], allowGids: [] },
    keyrings: new Map([['local', defaultLocalKeyring()]]),
  };
}
