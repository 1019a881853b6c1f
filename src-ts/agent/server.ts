/**
 * The agent: serves a KeyService on a Unix socket to the provider, the
 * ENGINE and the CLI. Each connection is checked by SO_PEERCRED, carries many
 * requests in flight, and is closed alone when it breaks the protocol.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { KmsError, asKmsError } from '../errors.js';
import type { KeyService, Peer } from '../keyservice.js';
import { Dispatcher, errorReply } from '../dispatch.js';
import type { AuditSink } from '../audit.js';
import { native, type WaitingSet } from '../native.js';
import { mayRunInline, setWaitingProbe } from '../backends/backend.js';
import { FrameReader, MsgType, ProtocolError, decodeFrame, encodeFrame, type Frame } from '../wire/codec.js';
import { Grants } from '../grants.js';
import { clearStaleSocket, prepareSocketDir } from './socket-path.js';

export interface AgentOptions {
  socketPath: string;
  keyService: KeyService;
  audit?: AuditSink;
  log?: (message: string) => void;
  /** Most requests one connection may have in flight before the agent stops reading from it. */
  maxInFlight?: number;
  /** The audit file's descriptor, for signatures answered from grants (src-ts/grants.ts); absent: no grants. */
  auditFd?: number;
}

/**
 * Whether peers other than the owner may connect at all. By default the socket
 * is 0600 in a 0700 directory; when the config allows other uids or gids, the
 * socket is 0666 in a 0711 directory and SO_PEERCRED alone decides.
 */
export function opensToOthers(ks: KeyService): boolean {
  const c = ks.config;
  return c.agent.allowUids.length + c.agent.allowGids.length > 0 || [...c.keyrings.values()].some((k) => k.allowUids.length + k.allowGids.length > 0);
}

interface Connection {
  socket: net.Socket;
  peer: Peer;
  inFlight: number;
  greeted: boolean;
}

export class Agent {
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  private readonly dispatcher: Dispatcher;
  private readonly ownUid = process.getuid?.() ?? 0;
  private readonly log: (message: string) => void;
  private readonly maxInFlight: number;
  private pending = 0;
  private stopping?: Promise<void>;
  /** The connections, for backends asking whether other requests wait (backend.ts othersWaiting). */
  private readonly waiting: WaitingSet;
  private readonly removeWaitingProbe: () => void;
  /** Signatures the KeyService approved for a peer, answered again without its dispatch. */
  private readonly grants?: Grants;

  private constructor(private readonly opts: AgentOptions) {
    this.log = opts.log ?? (() => {});
    this.maxInFlight = opts.maxInFlight ?? 256;
    this.dispatcher = new Dispatcher(opts.keyService, { ownUid: this.ownUid, ...(opts.audit ? { audit: opts.audit } : {}) });
    this.server = net.createServer((socket) => this.accept(socket));
    const waiting = native().waitingSet();
    this.waiting = waiting;
    this.removeWaitingProbe = setWaitingProbe(() => native().waitingAny(waiting));
    if (opts.auditFd !== undefined) this.grants = new Grants(opts.keyService, opts.auditFd);
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    prepareSocketDir(opts.socketPath);
    await clearStaleSocket(opts.socketPath);
    const agent = new Agent(opts);
    const shared = opensToOthers(opts.keyService);
    // The socket is born with its final mode: no window where others could connect.
    const oldMask = process.umask(shared ? 0o111 : 0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        agent.server.once('error', reject);
        agent.server.listen(opts.socketPath, () => {
          agent.server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(opts.socketPath, shared ? 0o666 : 0o600);
    if (shared) fs.chmodSync(path.dirname(opts.socketPath), 0o711);
    agent.log(`listening on ${opts.socketPath}${shared ? ' (open to the uids and gids the config allows; checked by SO_PEERCRED)' : ''}`);
    return agent;
  }

  get socketPath(): string {
    return this.opts.socketPath;
  }

  private accept(socket: net.Socket): void {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
    let peer: Peer;
    try {
      if (fd < 0) throw new Error('no file descriptor');
      peer = native().peerCredentials(fd);
    } catch (err) {
      this.log(`refused a connection: peer credentials unavailable (${(err as Error).message})`);
      socket.destroy();
      return;
    }
    try {
      native().waitingAdd(this.waiting, fd);
    } catch (err) {
      // Only a scheduling hint is lost: requests waiting here may find an RSA operation running on the event loop.
      this.log(`connection from pid ${peer.pid} is not watched for waiting requests (${(err as Error).message})`);
    }
    const conn: Connection = { socket, peer, inFlight: 0, greeted: false };
    this.connections.add(conn);
    const reader = new FrameReader();
    const broke = (err: unknown) => {
      this.log(`closing connection from pid ${peer.pid} uid ${peer.uid}: ${(err as Error).message}`);
      socket.destroy();
    };
    socket.on('data', (chunk: Buffer) => {
      let raws: Buffer[];
      try {
        raws = reader.pushRaw(chunk);
      } catch (err) {
        return broke(err);
      }
      for (const raw of raws) {
        if (socket.destroyed) return;
        const granted = this.answerGranted(conn, raw);
        if (granted === 'answered') continue;
        let frame: Frame;
        try {
          frame = decodeFrame(raw);
        } catch (err) {
          return broke(err);
        }
        this.receive(conn, frame, granted === 'no');
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.connections.delete(conn));
  }

  /**
   * Answers a SIGN a grant covers for this peer (grants.c). 'covered': an RSA grant covers it but
   * the event loop is busy, so the KeyService runs it on the pool (the grant stands); 'no': no grant.
   * Contention is probed only for RSA, not on every signature.
   */
  private answerGranted(conn: Connection, raw: Buffer): 'answered' | 'covered' | 'no' {
    if (!this.grants || !conn.greeted || this.stopping || raw.readUInt16BE(8) !== MsgType.SIGN) return 'no';
    const { pid, uid } = conn.peer;
    let reply = native().signGranted(raw, pid, uid, false);
    if (reply === true && mayRunInline(0)) reply = native().signGranted(raw, pid, uid, true);
    if (reply === null) return 'no';
    if (reply === true) return 'covered';
    conn.socket.write(reply);
    return 'answered';
  }

  /** mayGrant: a success may be granted (false when a grant already covers the request). */
  private receive(conn: Connection, frame: Frame, mayGrant = true): void {
    if (this.stopping || conn.socket.destroyed) return;
    if (!conn.greeted) {
      try {
        const reply = this.dispatcher.hello(frame);
        if (!this.mayConnect(conn.peer)) {
          throw new KmsError(2, `uid ${conn.peer.uid} may not use this agent; its owner (uid ${this.ownUid}) can allow it with allow_uids in the config`);
        }
        conn.greeted = true;
        conn.socket.write(encodeFrame(reply));
      } catch (err) {
        const e = asKmsError(err);
        this.log(`refused pid ${conn.peer.pid} uid ${conn.peer.uid}: ${e.message}`);
        conn.socket.end(encodeFrame(errorReply(frame, e)));
      }
      return;
    }
    conn.inFlight++;
    this.pending++;
    if (conn.inFlight >= this.maxInFlight) conn.socket.pause(); // backpressure: stop reading until replies drain
    void this.dispatcher.handle(frame, conn.peer).then((reply) => {
      conn.inFlight--;
      this.pending--;
      if (reply.status === 0 && mayGrant) this.grants?.afterSuccess(frame, conn.peer.uid);
      if (!conn.socket.destroyed) {
        try {
          conn.socket.write(encodeFrame(reply));
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
          conn.socket.write(encodeFrame(errorReply(frame, asKmsError(new Error(`reply too large: ${err.message}`)))));
        }
        if (conn.inFlight < this.maxInFlight && conn.socket.isPaused()) conn.socket.resume();
      }
      if (this.pending === 0) this.onIdle?.();
    });
  }

  private mayConnect(peer: Peer): boolean {
    const ks = this.opts.keyService;
    return ks.keyringNames().some((k) => ks.mayUse(k, peer, this.ownUid));
  }

  private onIdle?: () => void;

  /** Stops accepting, answers what is in flight (up to graceMs), then closes every connection and removes the socket. */
  stop(graceMs = 5000): Promise<void> {
    this.stopping ??= (async () => {
      this.grants?.close();
      this.server.close();
      if (this.pending > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, graceMs);
          this.onIdle = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      for (const c of this.connections) c.socket.end();
      await new Promise((r) => setTimeout(r, 20));
      for (const c of this.connections) c.socket.destroy();
      try {
        fs.unlinkSync(this.opts.socketPath);
      } catch {
        /* already gone */
      }
      await this.opts.keyService.close();
      this.removeWaitingProbe();
      this.log('stopped');
    })();
    return this.stopping;
  }
}
