/** The settings of a `type = "aws"` keyring, read from its TOML table and checked once. */
import { badRequest } from '../../errors.js';
import type { KeyringConfig } from '../../config.js';

export const AWS_KEY_USAGES = ['SIGN_VERIFY', 'ENCRYPT_DECRYPT', 'KEY_AGREEMENT'] as const;
export type AwsKeyUsage = (typeof AWS_KEY_USAGES)[number];

export interface AwsSettings {
  region?: string;
  endpoint?: string;
  profile?: string;
  /** Usage of the keys `keys create` makes: AWS KMS fixes it at creation. */
  keyUsage: AwsKeyUsage;
  /** Days between `keys delete` and the end of the key (AWS KMS: 7 to 30). */
  pendingWindowDays: number;
  /** Attempts per request, the first included, while the timeout allows. */
  maxAttempts: number;
  /** What error messages call the service: the endpoint, or the regional default. */
  where: string;
}

function optionalString(cfg: KeyringConfig, key: string): string | undefined {
  const v = cfg.settings[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0) throw badRequest(`keyrings.${cfg.name}.${key} must be a non-empty string`);
  return v;
}

function integer(cfg: KeyringConfig, key: string, dflt: number, min: number, max: number): number {
  const raw = cfg.settings[key];
  if (raw === undefined) return dflt;
  const n = typeof raw === 'bigint' ? Number(raw) : raw;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    throw badRequest(`keyrings.${cfg.name}.${key} must be a whole number from ${min} to ${max}`);
  }
  return n;
}

export function readAwsSettings(cfg: KeyringConfig, env: NodeJS.ProcessEnv = process.env): AwsSettings {
  const region = optionalString(cfg, 'region');
  if (region !== undefined && !/^[a-z0-9-]{2,32}$/.test(region))
    throw badRequest(`keyrings.${cfg.name}.region '${region}' is not an AWS region name (e.g. eu-west-1)`);
  const endpoint = optionalString(cfg, 'endpoint');
  if (endpoint !== undefined) {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      throw badRequest(`keyrings.${cfg.name}.endpoint '${endpoint}' is not a URL (e.g. https://kms.eu-west-1.amazonaws.com)`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw badRequest(`keyrings.${cfg.name}.endpoint must be an https:// (or http://) URL`);
    if (url.username || url.password) throw badRequest(`keyrings.${cfg.name}.endpoint must not carry credentials; use profile or the AWS credential chain`);
  }
  const usage = optionalString(cfg, 'key_usage') ?? 'SIGN_VERIFY';
  if (!(AWS_KEY_USAGES as readonly string[]).includes(usage)) {
    throw badRequest(`keyrings.${cfg.name}.key_usage '${usage}' is not one of ${AWS_KEY_USAGES.join(', ')}`);
  }
  const effectiveRegion = region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  const where = endpoint ?? (effectiveRegion ? `https://kms.${effectiveRegion}.amazonaws.com` : 'the AWS KMS endpoint of the profile region');
  const profile = optionalString(cfg, 'profile');
  return {
    ...(region ? { region } : {}),
    ...(endpoint ? { endpoint } : {}),
    ...(profile ? { profile } : {}),
    keyUsage: usage as AwsKeyUsage,
    pendingWindowDays: integer(cfg, 'pending_window_days', 30, 7, 30),
    maxAttempts: integer(cfg, 'max_attempts', 5, 1, 10),
    where,
  };
}
