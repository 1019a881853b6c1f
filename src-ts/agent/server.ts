/**
 * The agent: serves a KeyService on a Unix socket to the provider, the
 * ENGINE and the CLI. Each connection is checked by SO_PEERCRED, carries many
 * requests in flight, and is closed alone when it breaks the protocol.
 *
 * C threads listen, accept, read the peer's credentials and serve each
 * connection (src-native/node/serve.c). They answer the HELLO of a peer the
 * config admits, PING and the signatures a grant covers for this peer
 * themselves (src-ts/grants.ts), and hand every other request here, where the
 * Dispatcher answers it.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KmsError, asKmsError } from '../errors.js';
import type { KeyService, Peer } from '../keyservice.js';
import { Dispatcher, errorReply } from '../dispatch.js';
import type { AuditSink } from '../audit.js';
import { native, type ServeHandle } from '../native.js';
import { setWaitingProbe } from '../backends/backend.js';
import { FrameReader, MsgType, PROTOCOL_VERSION, ProtocolError, Tag, decodeFrame, encodeFrame, type Frame } from '../wire/codec.js';
import { Grants } from '../grants.js';
import { clearStaleSocket, prepareSocketDir } from './socket-path.js';

export interface AgentOptions {
  socketPath: string;
  keyService: KeyService;
  audit?: AuditSink;
  log?: (message: string) => void;
  /** Most requests one connection may have in flight before the agent stops reading from it. */
  maxInFlight?: number;
  /** Threads serving the connections (serve.c); default: one per core, at most 4. */
  threads?: number;
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
  id: number;
  peer: Peer;
  greeted: boolean;
  closed: boolean;
}

export class Agent {
  private readonly connections = new Map<number, Connection>();
  private readonly dispatcher: Dispatcher;
  private readonly ownUid = process.getuid?.() ?? 0;
  private readonly log: (message: string) => void;
  private pending = 0;
  private stopping?: Promise<void>;
  /** The C threads that own the connections once accepted. */
  private readonly serving: ServeHandle;
  private readonly removeWaitingProbe: () => void;
  /** Signatures the KeyService approved for a peer, answered again by the serving threads. */
  private readonly grants?: Grants;

  private constructor(private readonly opts: AgentOptions) {
    this.log = opts.log ?? (() => {});
    this.dispatcher = new Dispatcher(opts.keyService, { ownUid: this.ownUid, ...(opts.audit ? { audit: opts.audit } : {}) });
    // A token's signature keeps its thread waiting on the HSM (a network round trip for most): with PKCS#11
    // keyrings, two threads more than the cores, so that requests beyond the cores' still reach a token.
    const tokens = [...opts.keyService.config.keyrings.values()].some((k) => k.type === 'pkcs11');
    const threads = opts.threads ?? Math.min(4, os.availableParallelism()) + (tokens ? 2 : 0);
    // The threads greet the peers the config admits with the dispatcher's own reply: a process per command (openssl,
    // curl) then waits for JavaScript only where a decision is needed, not for its HELLO.
    const hello = encodeFrame(this.dispatcher.hello({ id: 0, type: MsgType.HELLO, status: 0, fields: [{ tag: Tag.VERSION, value: PROTOCOL_VERSION }] }));
    this.serving = native().serveStart((id, frames, reason, peer) => this.onEvent(id, frames, reason, peer), {
      threads,
      maxInFlight: opts.maxInFlight ?? 256,
      hello,
      helloVersion: PROTOCOL_VERSION,
    });
    // Backends choosing between the event loop and the pool ask whether requests wait for JavaScript.
    this.removeWaitingProbe = setWaitingProbe(() => native().serveQueued(this.serving));
    // With two or more serving threads one stays out of every PKCS#11 module: a token that hangs cannot stop PING and local keys.
    if (opts.auditFd !== undefined) this.grants = new Grants(opts.keyService, { auditFd: opts.auditFd, pkcs11MaxInside: Math.max(1, threads - 1) });
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    prepareSocketDir(opts.socketPath);
    await clearStaleSocket(opts.socketPath);
    const agent = new Agent(opts);
    const shared = opensToOthers(opts.keyService);
    // The socket is born with its final mode: no window where others could connect.
    const oldMask = process.umask(shared ? 0o111 : 0o177);
    try {
      // The serving threads accept, read SO_PEERCRED and greet the peers this policy admits; JavaScript hears of each
      // connection before its first frame.
      native().serveListen(agent.serving, opts.socketPath, opts.keyService.connectPolicy(agent.ownUid));
    } catch (err) {
      native().serveStop(agent.serving);
      agent.removeWaitingProbe();
      const e = err as NodeJS.ErrnoException;
      throw Object.assign(new Error(`the agent could not listen on ${opts.socketPath}: ${e.message}`), { code: e.code });
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

  /**
   * From the serving threads, in order for each connection: peer given, a connection they accepted; then its requests
   * in arrival order; frames null (and no peer): it has closed.
   */
  private onEvent(id: number, frames: Buffer | null, reason?: string, peer?: Peer): void {
    if (peer) {
      const conn = { id, peer, greeted: false, closed: false };
      this.connections.set(id, conn);
      if (this.stopping) this.close(conn);
      return;
    }
    const conn = this.connections.get(id);
    if (!conn) return;
    if (frames === null) {
      conn.closed = true;
      this.connections.delete(id);
      if (reason) this.log(`closed connection from pid ${conn.peer.pid} uid ${conn.peer.uid}: ${reason}`);
      return;
    }
    for (const raw of new FrameReader().pushRaw(frames)) {
      if (conn.closed) return;
      let frame: Frame;
      try {
        frame = decodeFrame(raw);
      } catch (err) {
        this.log(`closing connection from pid ${conn.peer.pid} uid ${conn.peer.uid}: ${(err as Error).message}`);
        this.close(conn);
        return;
      }
      this.receive(conn, frame);
    }
  }

  private close(conn: Connection): void {
    conn.closed = true;
    this.connections.delete(conn.id);
    native().serveClose(this.serving, conn.id);
  }

  private send(conn: Connection, reply: Frame, end = false): void {
    if (conn.closed) return;
    let bytes: Buffer;
    try {
      bytes = encodeFrame(reply);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      bytes = encodeFrame(errorReply(reply, asKmsError(new Error(`reply too large: ${err.message}`))));
    }
    native().serveReply(this.serving, conn.id, bytes, end);
  }

  private receive(conn: Connection, frame: Frame): void {
    if (this.stopping || conn.closed) return;
    // Greeted by the threads: what comes here is what follows the HELLO.
    if (!conn.greeted && native().serveIsGreeted(this.serving, conn.id)) conn.greeted = true;
    if (!conn.greeted) {
      try {
        const reply = this.dispatcher.hello(frame);
        if (!this.mayConnect(conn.peer)) {
          throw new KmsError(2, `uid ${conn.peer.uid} may not use this agent; its owner (uid ${this.ownUid}) can allow it with allow_uids in the config`);
        }
        // The threads did not greet this admitted peer (their decoder refused a HELLO this one accepts): all of it comes here.
        conn.greeted = true;
        this.send(conn, reply);
      } catch (err) {
        const e = asKmsError(err);
        this.log(`refused pid ${conn.peer.pid} uid ${conn.peer.uid}: ${e.message}`);
        this.send(conn, errorReply(frame, e), true);
      }
      return;
    }
    this.pending++;
    void this.dispatcher.handle(frame, conn.peer).then((reply) => {
      this.pending--;
      if (reply.status === 0) this.grants?.afterSuccess(frame, conn.peer);
      this.send(conn, reply);
      if (this.pending === 0) this.onIdle?.();
    });
  }

  private mayConnect(peer: Peer): boolean {
    const ks = this.opts.keyService;
    return ks.keyringNames().some((k) => ks.mayUse(k, peer, this.ownUid));
  }

  private onIdle?: () => void;

  /** Set by stop() when a serving thread did not come back from a token: the process must then leave with native().exitStuck(). */
  stuck = false;

  /** Stops accepting, answers what is in flight (up to graceMs), then closes every connection and removes the socket. */
  stop(graceMs = 5000): Promise<void> {
    this.stopping ??= (async () => {
      this.grants?.close();
      native().serveUnlisten(this.serving);
      if (this.pending > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, graceMs);
          this.onIdle = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      // Sends the replies still queued, then closes every connection.
      if (!native().serveStop(this.serving)) {
        this.stuck = true;
        this.log('a serving thread is still inside a PKCS#11 library that has not returned (a hung token); leaving it there');
      }
      // Answers that come after the grace (a slow or hung keyring) have nowhere to go.
      for (const conn of this.connections.values()) conn.closed = true;
      this.connections.clear();
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
