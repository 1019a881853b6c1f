/**
 * Key commands work with or without an agent: through the agent when one is
 * listening (so its caches stay right), else on a KeyService of their own.
 * Both share the store safely (atomic, exclusive file creation).
 */
import { AgentClient } from '../agent/client.js';
import { ErrorCode, KmsError } from '../errors.js';
import { KeyService } from '../keyservice.js';
import { loadConfig, type Config } from '../config.js';
import { MsgType, Tag } from '../wire/codec.js';
import { entryToSummary, fieldsToDescribe } from '../wire/fields.js';
import type { KeyDescription, KeySummary } from '../types.js';
import type { Progress } from '../backends/backend.js';

export interface KeyOps {
  /** 'agent <socket>' or 'direct'. */
  readonly via: string;
  describe(uri: string): Promise<KeyDescription>;
  create(keyring: string, name: string, spec: string, progress?: Progress): Promise<KeyDescription>;
  list(keyring?: string): Promise<KeySummary[]>;
  delete(uri: string): Promise<void>;
  close(): Promise<void>;
}

class AgentOps implements KeyOps {
  constructor(private readonly client: AgentClient) {}
  get via() {
    return `agent ${this.client.socketPath}`;
  }
  async describe(uri: string) {
    return fieldsToDescribe(await this.client.request(MsgType.DESCRIBE, [{ tag: Tag.URI, value: uri }]));
  }
  async create(keyring: string, name: string, spec: string, progress?: Progress) {
    progress?.(`generating ${spec} key '${name}' in the agent`);
    return fieldsToDescribe(
      await this.client.request(MsgType.CREATE, [
        { tag: Tag.KEYRING, value: keyring },
        { tag: Tag.NAME, value: name },
        { tag: Tag.KEY_SPEC, value: spec },
      ]),
    );
  }
  async list(keyring?: string) {
    const f = await this.client.request(MsgType.LIST, keyring ? [{ tag: Tag.KEYRING, value: keyring }] : []);
    return f.entries().map(entryToSummary);
  }
  async delete(uri: string) {
    await this.client.request(MsgType.DELETE, [{ tag: Tag.URI, value: uri }]);
  }
  async close() {
    this.client.close();
  }
}

class DirectOps implements KeyOps {
  readonly via = 'direct';
  constructor(readonly ks: KeyService) {}
  describe(uri: string) {
    return this.ks.describe(uri);
  }
  create(keyring: string, name: string, spec: string, progress?: Progress) {
    return this.ks.create(keyring, name, spec, progress);
  }
  list(keyring?: string) {
    return this.ks.list(keyring);
  }
  delete(uri: string) {
    return this.ks.delete(uri);
  }
  close() {
    return this.ks.close();
  }
}

export async function openKeyOps(opts: { config?: string; socket?: string; timeoutMs: number }): Promise<{ ops: KeyOps; config: Config }> {
  const config = loadConfig(opts.config);
  const socket = opts.socket ?? config.agent.socket;
  try {
    const client = await AgentClient.connect(socket, { timeoutMs: opts.timeoutMs });
    return { ops: new AgentOps(client), config };
  } catch (err) {
    // No agent: work on the store directly. Any other failure (access denied, a broken agent) is the user's to see.
    if (!(err instanceof KmsError && err.code === ErrorCode.BACKEND_UNAVAILABLE)) throw err;
    return { ops: new DirectOps(new KeyService(config)), config };
  }
}
