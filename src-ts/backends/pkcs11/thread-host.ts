/**
 * A token thread: a worker that hosts the backends of one PKCS#11 library
 * (thread-client.ts explains why). Every call into that library, short ones
 * included, is made here, so a library that blocks holds this thread and its
 * own callers, never the thread that answers everything else, nor another
 * library's.
 */
import { parentPort } from 'node:worker_threads';
import { ErrorCode, KmsError } from '../../errors.js';
import type { KeyringConfig } from '../../config.js';
import { Pkcs11Backend, allowPool } from '../pkcs11.js';
import { asBuffers, type Reply, type Request, type SerializedError } from './thread-client.js';

const port = parentPort!;
// Only a KeyService on a main thread (agent, CLI) has a token thread (backends/index.ts): its calls may use libuv's pool.
allowPool();

interface Hosted {
  backend: Pkcs11Backend;
  /** Bumped whenever grants of the keyring may have gone void; shared with the client. */
  voided: Int32Array;
}

const hosted = new Map<string, Hosted>();
const aborts = new Map<number, AbortController>();

function serialize(err: unknown): SerializedError {
  if (err instanceof KmsError) return { code: err.code, message: err.message };
  return { code: ErrorCode.INTERNAL, message: `internal error: ${err instanceof Error ? err.message : String(err)}` };
}

function open(ring: string, cfg: KeyringConfig, voided: SharedArrayBuffer): void {
  const counter = new Int32Array(voided);
  hosted.set(ring, { backend: new Pkcs11Backend(cfg, { grantsVoided: () => Atomics.add(counter, 0, 1), settingsRead: true }), voided: counter });
}

async function run(req: Extract<Request, { t: 'call' }>, signal: AbortSignal): Promise<unknown> {
  const h = hosted.get(req.ring);
  if (!h) throw new KmsError(ErrorCode.INTERNAL, `internal error: keyring '${req.ring}' is not open on the token thread`);
  const b = h.backend;
  const a = asBuffers(req.args) as never[];
  switch (req.method) {
    case 'describe':
      return b.describe(a[0], signal);
    case 'sign':
      return b.sign(a[0], a[1], signal);
    case 'decrypt':
      return b.decrypt(a[0], a[1], signal);
    case 'derive':
      return b.derive(a[0], a[1], signal);
    case 'random':
      return b.random(a[0], signal);
    case 'grant': {
      // Read before: a grant voided while it was being made is reported void.
      const voided = Atomics.load(h.voided, 0);
      const g = await b.grant(a[0], a[1], signal, a[2]);
      return g && g.stillValid() ? { pkcs11: g.pkcs11, voided } : undefined;
    }
    case 'create':
      return b.create(a[0], a[1], signal, (message) => port.postMessage({ t: 'progress', id: req.id, message } satisfies Reply));
    case 'list':
      return b.list(signal);
    case 'delete':
      return b.delete(a[0], signal);
    case 'protectionSummary':
      return b.protectionSummary();
    case 'doctor':
      return b.doctor(signal, a[0]);
    case 'close':
      hosted.delete(req.ring);
      return b.close();
  }
}

port.on('message', (req: Request) => {
  if (req.t === 'open') return open(req.ring, req.cfg, req.voided);
  if (req.t === 'abort') return aborts.get(req.id)?.abort();
  const ctl = new AbortController();
  aborts.set(req.id, ctl);
  run(req, ctl.signal)
    .then(
      (value) => port.postMessage({ t: 'result', id: req.id, value } satisfies Reply),
      (err: unknown) => port.postMessage({ t: 'error', id: req.id, error: serialize(err) } satisfies Reply),
    )
    // A result that cannot cross threads (DataCloneError) is that call's error, not the end of the thread.
    .catch((err: unknown) => port.postMessage({ t: 'error', id: req.id, error: serialize(err) } satisfies Reply))
    .finally(() => aborts.delete(req.id));
});
