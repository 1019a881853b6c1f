import type { KeyringConfig } from '../config.js';
import { unsupported } from '../errors.js';
import type { Backend } from './backend.js';
import { LocalBackend } from './local.js';

export type BackendFactory = (cfg: KeyringConfig) => Backend;

/** One entry per backend type; the PKCS#11 and AWS backends join here. */
export const BACKENDS: Record<string, BackendFactory> = {
  local: (cfg) => new LocalBackend(cfg),
  aws: (cfg) => new (require('./aws.js') as typeof import('./aws.js')).AwsBackend(cfg), // loaded on first use: the AWS SDK is heavy
  // on the token thread, which loads the PKCS#11 binding on first use
  pkcs11: (cfg) => new (require('./pkcs11/thread-client.js') as typeof import('./pkcs11/thread-client.js')).TokenThreadBackend(cfg),
};

export function createBackend(cfg: KeyringConfig, factories: Record<string, BackendFactory> = BACKENDS): Backend {
  const factory = factories[cfg.type];
  if (!factory) throw unsupported(`keyring '${cfg.name}' has type '${cfg.type}', which this build of kmsbridge does not support yet`);
  return factory(cfg);
}
