/**
 * kmsbridge for Node.js: use a key manager's keys with the APIs Node already
 * has, in-process.
 *
 *   const kb = await kmsbridge.load();
 *   https.createServer({ key: kb.keyRef('kms:local/web'), cert }, app);
 *   crypto.sign('sha256', data, kb.privateKey('kms:local/web'));
 *   await kb.close();
 *
 * The KeyService runs in a worker thread (or, with `agent`, behind an agent
 * socket); Node's OpenSSL reaches it through the kmsbridge provider that the
 * addon registers. Do not call keyObject.asymmetricKeyDetails,
 * keyObject.export({ format: 'jwk' }) or sign with dsaEncoding 'ieee-p1363' on
 * these keys: Node 20 aborts the process for keys whose private half it cannot
 * export. Use kb.describe(uri) for the details.
 */
import crypto from 'node:crypto';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { ErrorCode, KmsError } from './errors.js';
import { keyRefPem } from './keyref.js';
import { native } from './native.js';
import { parseKeyUri } from './uri.js';
import type { KeyDescription } from './types.js';
import { decodeFrame } from './wire/codec.js';
import { Fields, fieldsToDescribe } from './wire/fields.js';
import type { HostMessage, WorkerInit, WorkerMessage } from './node/worker.js';

export { KmsError, ErrorCode } from './errors.js';
export type { KeyDescription, KeySpec, KeyType, Curve, Digest } from './types.js';
export { keyRefPem } from './keyref.js';

export interface LoadOptions {
  /** Config file; default: KMSBRIDGE_CONFIG, ~/.config/kmsbridge/config.toml, /etc/kmsbridge/config.toml. */
  config?: string;
  /** Use a running agent at this socket instead of an in-process KeyService (the application then holds no backend credentials). */
  agent?: string;
  /** Bound on each key operation, in milliseconds (default 30000). */
  timeoutMs?: number;
}

export interface KmsBridge {
  /** The key-reference PEM: pass it as `key` to tls/https, or to crypto.createPrivateKey. */
  keyRef(uri: string): string;
  /** A KeyObject whose private half stays in the key manager. */
  privateKey(uri: string): crypto.KeyObject;
  /** Type, size or curve, public key (SPKI DER) and allowed algorithms. */
  describe(uri: string): Promise<KeyDescription>;
  /** Stops the KeyService worker; pending key operations fail at once. */
  close(): Promise<void>;
}

const WORKER_SCRIPT = path.join(__dirname, 'node', 'worker.js');
const RESTART_DELAY_MS = 100;

/** Hosts the KeyService worker; restarts it if it dies, until closed. */
class WorkerHost {
  private worker?: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, (m: WorkerMessage) => void>();
  private closing = false;
  private generation = 0;

  constructor(private readonly init: Omit<WorkerInit, 'generation'>) {}

  async start(): Promise<void> {
    this.generation++;
    const worker = new Worker(WORKER_SCRIPT, { workerData: { ...this.init, generation: this.generation } satisfies WorkerInit });
    let onMessage!: (m: WorkerMessage) => void, onError!: (e: Error) => void, onExit!: (code: number) => void;
    const ready = await new Promise<WorkerMessage>((resolve, reject) => {
      onMessage = resolve;
      onError = reject;
      onExit = (code) => reject(new KmsError(ErrorCode.INTERNAL, `the KeyService worker exited at start (code ${code})`));
      worker.once('message', onMessage).once('error', onError).once('exit', onExit);
    });
    // Only our own listeners: removeAllListeners() would also drop Node's, which manage the worker's port.
    worker.off('message', onMessage).off('error', onError).off('exit', onExit);
    if (!('ready' in ready) || !ready.ready) {
      await worker.terminate();
      throw new KmsError(ErrorCode.BAD_REQUEST, 'ready' in ready && !ready.ready ? ready.error : 'the KeyService worker did not start');
    }
    worker.on('message', (m: WorkerMessage) => {
      if ('id' in m) {
        this.pending.get(m.id)?.(m);
        this.pending.delete(m.id);
      }
    });
    worker.on('error', () => {}); // reported through 'exit'
    worker.on('exit', () => this.onExit(worker));
    // Idle, the worker must not keep the process alive: the application's own handles do that.
    worker.unref();
    this.worker = worker;
  }

  private onExit(worker: Worker): void {
    if (this.worker !== worker) return;
    this.worker = undefined;
    for (const [id, settle] of this.pending) settle({ id, ok: false, code: ErrorCode.BACKEND_UNAVAILABLE, message: 'the KeyService worker ended' });
    this.pending.clear();
    if (this.closing) return;
    // Key operations fail while it is down (the bridge fails them at once); the next ones find it back.
    setTimeout(() => {
      if (!this.closing) this.start().catch(() => this.onExit(worker));
    }, RESTART_DELAY_MS).unref();
  }

  request(m: HostMessage extends infer T ? (T extends unknown ? Omit<T, 'id'> : never) : never): Promise<WorkerMessage> {
    const worker = this.worker;
    if (!worker) return Promise.reject(new KmsError(ErrorCode.BACKEND_UNAVAILABLE, 'the KeyService worker is not running'));
    const id = this.nextId++;
    worker.ref(); // awaited by the application: keep the process alive until the answer
    return new Promise((resolve) => {
      this.pending.set(id, (reply) => {
        if (this.pending.size <= 1) worker.unref();
        resolve(reply);
      });
      worker.postMessage({ ...m, id } as HostMessage);
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    const worker = this.worker;
    if (!worker) return;
    // A worker that does not answer in 5 s is terminated anyway; the timer must not hold the process open.
    await Promise.race([this.request({ op: 'close' }), new Promise((r) => setTimeout(r, 5000).unref())]);
    await worker.terminate();
  }

  get threadId(): number | undefined {
    return this.worker?.threadId;
  }
}

let active: { host?: WorkerHost; closed: boolean } | undefined;

/**
 * Starts the KeyService (a worker thread, or a connection to `agent`) and
 * resolves once key operations can be served: await it before creating TLS
 * contexts, which load their keys synchronously.
 */
export async function load(options: LoadOptions = {}): Promise<KmsBridge> {
  const addon = native();
  const reg = addon.registration();
  if (!reg.provider) throw new KmsError(ErrorCode.INTERNAL, reg.error ?? 'the kmsbridge provider is not registered');
  if (active && !active.closed)
    throw new KmsError(ErrorCode.BAD_REQUEST, 'kmsbridge is already loaded in this process: close() the first instance before loading again');
  const timeoutMs = options.timeoutMs ?? 30_000;
  const state: { host?: WorkerHost; closed: boolean } = { closed: false };

  let describe: (uri: string) => Promise<KeyDescription>;
  if (options.agent) {
    const { AgentClient } = await import('./agent/client.js');
    const { MsgType, Tag } = await import('./wire/codec.js');
    const client = await AgentClient.connect(options.agent, { timeoutMs, peerName: 'kmsbridge-node' });
    client.close(); // proves the agent is there; the provider has its own connections
    addon.useChannel('agent', timeoutMs, path.resolve(options.agent));
    describe = async (uri) => {
      const c = await AgentClient.connect(options.agent!, { timeoutMs, peerName: 'kmsbridge-node' });
      try {
        return fieldsToDescribe(await c.request(MsgType.DESCRIBE, [{ tag: Tag.URI, value: uri }]));
      } finally {
        c.close();
      }
    };
  } else {
    const host = new WorkerHost({ ...(options.config ? { config: options.config } : {}) });
    await host.start();
    state.host = host;
    addon.useChannel('bridge', timeoutMs);
    describe = async (uri) => {
      parseKeyUri(uri);
      const m = await host.request({ op: 'describe', uri });
      if ('ok' in m && m.ok && m.frame) return fieldsToDescribe(new Fields(decodeFrame(Buffer.from(m.frame)).fields));
      if ('ok' in m && !m.ok) throw new KmsError(m.code, m.message);
      throw new KmsError(ErrorCode.INTERNAL, 'unexpected answer from the KeyService worker');
    };
  }
  active = state;

  const live = () => {
    if (state.closed) throw new KmsError(ErrorCode.BAD_REQUEST, 'this kmsbridge instance is closed');
  };
  return {
    keyRef(uri) {
      live();
      return keyRefPem(uri);
    },
    privateKey(uri) {
      live();
      const pem = keyRefPem(uri);
      try {
        return crypto.createPrivateKey(pem);
      } catch (err) {
        // Node shows only OpenSSL's reason string; the KeyService's own message says what is wrong.
        const why = addon.lastError().replace(/^kmsbridge: /, '') || (err as Error).message;
        throw new KmsError(ErrorCode.NOT_FOUND, `cannot load ${uri}: ${why}`);
      }
    },
    describe(uri) {
      live();
      return describe(uri);
    },
    async close() {
      if (state.closed) return;
      state.closed = true;
      addon.useChannel('none');
      await state.host?.close();
    },
  };
}
