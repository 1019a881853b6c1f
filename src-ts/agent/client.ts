/**
 * A client of the agent socket, speaking the same frames as the C channel.
 * Many requests may be in flight; each has its own timeout.
 */
import net from 'node:net';
import { ErrorCode, KmsError } from '../errors.js';
import { FrameReader, MsgType, PROTOCOL_VERSION, REPLY_BIT, Tag, encodeFrame, type Field, type Frame } from '../wire/codec.js';
import { Fields } from '../wire/fields.js';

export interface ClientOptions {
  /** Bound on connecting and on each request, in milliseconds. */
  timeoutMs?: number;
  peerName?: string;
}

interface Pending {
  resolve: (f: Fields) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class AgentClient {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closedError?: KmsError;

  private constructor(
    private readonly socket: net.Socket,
    readonly socketPath: string,
    private readonly timeoutMs: number,
  ) {
    const reader = new FrameReader();
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = reader.push(chunk);
      } catch (err) {
        this.fail(new KmsError(ErrorCode.INTERNAL, `agent at ${socketPath} sent a malformed frame: ${(err as Error).message}`));
        return;
      }
      for (const f of frames) this.settle(f);
    });
    socket.on('error', (err) => this.fail(unavailable(socketPath, err)));
    socket.on('close', () => this.fail(new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `the agent at ${socketPath} closed the connection`)));
  }

  static async connect(socketPath: string, opts: ClientOptions = {}): Promise<AgentClient> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new KmsError(ErrorCode.TIMEOUT, `no answer from the agent at ${socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (err) => {
        clearTimeout(timer);
        reject(unavailable(socketPath, err));
      });
    });
    const client = new AgentClient(socket, socketPath, timeoutMs);
    try {
      await client.request(MsgType.HELLO, [
        { tag: Tag.VERSION, value: PROTOCOL_VERSION },
        { tag: Tag.PEER_NAME, value: opts.peerName ?? 'kmsbridge-cli/0.1.0' },
      ]);
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  request(type: MsgType, fields: Field[] = []): Promise<Fields> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    return new Promise<Fields>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new KmsError(ErrorCode.TIMEOUT, `the agent at ${this.socketPath} did not answer ${MsgType[type]} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.socket.write(encodeFrame({ id, type, status: 0, fields }));
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new KmsError(ErrorCode.BAD_REQUEST, (err as Error).message));
      }
    });
  }

  private settle(frame: Frame): void {
    const p = this.pending.get(frame.id);
    if (!p) return; // timed out already
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    const fields = new Fields(frame.fields);
    if ((frame.type & REPLY_BIT) === 0) p.reject(new KmsError(ErrorCode.INTERNAL, 'the agent answered with a request frame'));
    else if (frame.status !== 0) {
      const code = ErrorCode[frame.status] !== undefined ? (frame.status as ErrorCode) : ErrorCode.INTERNAL;
      p.reject(new KmsError(code, fields.string(Tag.MESSAGE) ?? `agent error ${frame.status}`));
    } else p.resolve(fields);
  }

  private fail(err: KmsError): void {
    this.closedError ??= err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(id);
    }
    this.socket.destroy();
  }

  close(): void {
    this.fail(new KmsError(ErrorCode.BACKEND_UNAVAILABLE, 'client closed'));
  }
}

function unavailable(socketPath: string, err: Error): KmsError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ECONNREFUSED') {
    return new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `no kmsbridge agent is listening on ${socketPath}; start one with: kmsbridge agent`);
  }
  if (code === 'EACCES') return new KmsError(ErrorCode.ACCESS_DENIED, `permission denied on the agent socket ${socketPath}`);
  return new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `cannot reach the agent at ${socketPath}: ${err.message}`);
}
