import { isMainThread } from 'node:worker_threads';
import type { KeyringConfig } from '../config.js';
import { unsupported } from '../errors.js';
import type { Backend } from './backend.js';
import { LocalBackend } from './local.js';

export type BackendFactory = (cfg: KeyringConfig) => Backend;

/** One entry per backend type; the PKCS#11 and AWS backends join here. */
export const BACKENDS: Record<string, BackendFactory> = {
  local: (cfg) => new LocalBackend(cfg),
  aws: (cfg) => new (require('./aws.js') as typeof import('./aws.js')).AwsBackend(cfg), // loaded on first use: the AWS SDK is heavy
  // Loads the PKCS#11 binding on first use. Where the KeyService runs on a process's main thread (the agent, the CLI), on the
  // token thread of its library, so that a hung token cannot hold that thread (pkcs11/thread-client.ts); the in-process worker is a thread of
  // the KeyService's own already, and a second hop there halved its token signatures/s (docs/bench/notes.md).
  pkcs11: (cfg) =>
    isMainThread
      ? new (require('./pkcs11/thread-client.js') as typeof import('./pkcs11/thread-client.js')).TokenThreadBackend(cfg)
      : new (require('./pkcs11.js') as typeof import('./pkcs11.js')).Pkcs11Backend(cfg),
};

export function createBackend(cfg: KeyringConfig, factories: Record<string, BackendFactory> = BACKENDS): Backend {
  const factory = factories[cfg.type];
  if (!factory) throw unsupported(`keyring '${cfg.name}' has type '${cfg.type}', which this build of kmsbridge does not support yet`);
  return factory(cfg);
}
