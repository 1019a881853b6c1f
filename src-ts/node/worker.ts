/**
 * The KeyService worker of the in-process mode: it owns the N-API bridge's
 * threadsafe function, so a thread that blocks inside a TLS handshake is
 * answered from here, never from the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openAuditSink } from '../audit.js';
import { loadConfig } from '../config.js';
import { Dispatcher, errorReply } from '../dispatch.js';
import { asKmsError, ErrorCode, KmsError } from '../errors.js';
import { KeyService } from '../keyservice.js';
import { native, type BridgeHandle } from '../native.js';
import { MsgType, REPLY_BIT, decodeFrame, encodeFrame, typeName } from '../wire/codec.js';
import { describeToFields } from '../wire/fields.js';
import { Grants } from '../grants.js';

export interface WorkerInit {
  config?: string;
  /** 1 for the first worker of the process, then 2, 3… after restarts. */
  generation: number;
}

/** Messages from the host: describe a key (for kb.describe) or stop. */
export type HostMessage = { id: number; op: 'describe'; uri: string } | { id: number; op: 'close' };
export type WorkerMessage =
  { ready: true } | { ready: false; error: string } | { id: number; ok: true; frame?: Uint8Array } | { id: number; ok: false; code: number; message: string };

async function main(): Promise<void> {
  const port = parentPort!;
  const init = workerData as WorkerInit;
  let ks: KeyService;
  let audit: ReturnType<typeof openAuditSink> | undefined;
  try {
    const config = loadConfig(init.config);
    ks = new KeyService(config);
    // In-process, audit only where the config names a file: stderr is the application's.
    if (config.agent.auditLog !== 'stderr') audit = openAuditSink(config.agent.auditLog);
  } catch (err) {
    port.postMessage({ ready: false, error: asKmsError(err).message } satisfies WorkerMessage);
    return;
  }
  const uid = process.getuid?.() ?? 0;
  const peer = { pid: process.pid, uid, gid: process.getgid?.() ?? 0 };
  const dispatcher = new Dispatcher(ks, { ownUid: uid, ...(audit ? { audit: audit.sink } : {}) });
  const addon = native();

  // Fault injection for the test suite only: the first worker of a process ends
  // itself on its first request of the named type, as a crash mid-handshake would.
  const crashOn = init.generation === 1 ? process.env.KMSBRIDGE_FAULT_WORKER_EXIT_ON : undefined;

  // After a signature the KeyService approved and ran, the caller's thread runs the same operation itself next time.
  const grants = new Grants(ks, { auditFd: audit?.fd ?? -1 });

  addon.bridgeBind((frame: Buffer, handle: BridgeHandle) => {
    let reply: Buffer;
    try {
      const req = decodeFrame(frame);
      if (crashOn && typeName(req.type) === crashOn) process.exit(70);
      void dispatcher.handle(req, peer).then((r) => {
        addon.bridgeComplete(handle, encodeFrame(r));
        if (r.status === 0) grants.afterSuccess(req);
      });
      return;
    } catch (err) {
      reply = encodeFrame(errorReply({ id: frame.readUInt32BE(4), type: frame.readUInt16BE(8) }, new KmsError(ErrorCode.BAD_REQUEST, (err as Error).message)));
    }
    addon.bridgeComplete(handle, reply);
  });

  port.on('message', (m: HostMessage) => {
    if (m.op === 'close') {
      grants.close();
      addon.bridgeUnbind();
      void ks.close().then(() => {
        audit?.close();
        port.postMessage({ id: m.id, ok: true } satisfies WorkerMessage);
        port.close();
      });
      return;
    }
    ks.describe(m.uri).then(
      (d) =>
        port.postMessage({
          id: m.id,
          ok: true,
          frame: encodeFrame({ id: m.id, type: MsgType.DESCRIBE | REPLY_BIT, status: 0, fields: describeToFields(d) }),
        } satisfies WorkerMessage),
      (err) => {
        const e = asKmsError(err);
        port.postMessage({ id: m.id, ok: false, code: e.code, message: e.message } satisfies WorkerMessage);
      },
    );
  });
  port.postMessage({ ready: true } satisfies WorkerMessage);
}

void main();
