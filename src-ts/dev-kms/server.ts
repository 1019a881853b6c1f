/**
 * A TEST DOUBLE of AWS KMS — not AWS, and not a key manager to keep real keys
 * in. It speaks AWS KMS's JSON protocol on loopback only (`POST /`,
 * `X-Amz-Target: TrentService.<Op>`, `application/x-amz-json-1.1`, SigV4
 * required and checked against the test credentials it was given), holds
 * real node:crypto keys, counts calls per operation and injects faults per
 * operation (throttling, 5xx, slow answers, dropped connections, malformed
 * bodies, any AWS error), so kmsbridge's AWS backend can be developed and
 * tested without an AWS account. `kmsbridge dev-kms` runs it.
 *
 * Control endpoint (no signature; loopback only):
 *   GET    /_dev-kms/stats    {calls: {Op: n}, faulted: {Op: n}, keys, aliases}
 *   POST   /_dev-kms/faults   a Fault or a list of them
 *   DELETE /_dev-kms/faults   clears the faults
 *   POST   /_dev-kms/reset    clears faults and counters (keys stay)
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { AwsFault, DevKmsStore, type DevKmsState } from './operations.js';
import { verifySigV4, type TestCredentials } from './sigv4.js';

export type { TestCredentials } from './sigv4.js';

export const FAULT_KINDS = ['throttle', 'server-error', 'slow', 'drop', 'malformed', 'error'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface Fault {
  /** An operation name (`Sign`), or `*` for every operation. */
  operation: string;
  kind: FaultKind;
  /** How many matching calls it hits; default 1; 0 means every call until cleared. */
  times?: number;
  /** For `slow`: how long to wait before answering (default 60000 ms). */
  delayMs?: number;
  /** For `server-error` and `error`: the HTTP status (500 / 400 by default). */
  status?: number;
  /** For `error` (and `server-error`): the AWS error type, e.g. `AccessDeniedException`. */
  type?: string;
  message?: string;
}

export interface DevKmsOptions {
  /** Loopback only: 127.0.0.1 (default), ::1 or localhost. */
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  region?: string;
  accountId?: string;
  /** The credentials whose signatures are accepted. */
  credentials: TestCredentials[];
  /** PEM key and certificate to serve HTTPS instead of HTTP. */
  tls?: { key: string | Buffer; cert: string | Buffer };
  /** A file that keeps keys between runs (plain PKCS#8 inside: test keys only). */
  stateFile?: string;
  /** One line per request, for a terminal. Never given credentials or key material. */
  log?: (line: string) => void;
}

export interface DevKmsStats {
  calls: Record<string, number>;
  faulted: Record<string, number>;
  keys: number;
  aliases: number;
}

export interface DevKmsServer {
  /** `http://127.0.0.1:<port>` (or https). */
  readonly url: string;
  readonly port: number;
  readonly region: string;
  readonly accountId: string;
  addFault(fault: Fault): void;
  clearFaults(): void;
  stats(): DevKmsStats;
  /** Clears faults and counters; keys stay. */
  reset(): void;
  close(): Promise<void>;
}

const CONTROL = '/_dev-kms/';
const TARGET_PREFIX = 'TrentService.';
const JSON_TYPE = 'application/x-amz-json-1.1';
const MAX_BODY = 1 << 20;
const MUTATING = new Set(['CreateKey', 'CreateAlias', 'DeleteAlias', 'ScheduleKeyDeletion', 'DisableKey', 'EnableKey']);
const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

interface ActiveFault extends Fault {
  left: number;
}

export function checkFault(value: unknown): Fault {
  if (typeof value !== 'object' || value === null) throw new Error('a fault is an object: {"operation": "Sign", "kind": "throttle"}');
  const f = value as Record<string, unknown>;
  if (typeof f.operation !== 'string' || f.operation.length === 0) throw new Error('fault.operation must be an operation name or "*"');
  if (!(FAULT_KINDS as readonly string[]).includes(f.kind as string)) throw new Error(`fault.kind must be one of ${FAULT_KINDS.join(', ')}`);
  for (const n of ['times', 'delayMs', 'status'] as const) {
    if (f[n] !== undefined && (typeof f[n] !== 'number' || !Number.isInteger(f[n]) || (f[n] as number) < 0))
      throw new Error(`fault.${n} must be a whole number`);
  }
  for (const s of ['type', 'message'] as const) {
    if (f[s] !== undefined && typeof f[s] !== 'string') throw new Error(`fault.${s} must be a string`);
  }
  return f as unknown as Fault;
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new AwsFault(413, 'RequestEntityTooLargeException', 'Request body too large'));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

export async function startDevKms(opts: DevKmsOptions): Promise<DevKmsServer> {
  const host = opts.host ?? '127.0.0.1';
  if (!LOOPBACK.has(host)) throw new Error(`the AWS KMS test double listens on loopback only (127.0.0.1, ::1, localhost), not ${host}`);
  if (opts.credentials.length === 0) throw new Error('the AWS KMS test double needs at least one set of test credentials');
  const region = opts.region ?? 'us-east-1';
  const accountId = opts.accountId ?? '111122223333';
  const store = new DevKmsStore({ region, accountId });
  if (opts.stateFile && fs.existsSync(opts.stateFile)) store.importState(JSON.parse(fs.readFileSync(opts.stateFile, 'utf8')) as DevKmsState);
  const log = opts.log ?? (() => {});

  let faults: ActiveFault[] = [];
  let calls: Record<string, number> = {};
  let faulted: Record<string, number> = {};
  const timers = new Set<NodeJS.Timeout>();
  const sockets = new Set<net.Socket>();

  const takeFault = (op: string): ActiveFault | undefined => {
    const f = faults.find((x) => x.operation === op || x.operation === '*');
    if (!f) return undefined;
    if (f.left > 0 && --f.left === 0) faults = faults.filter((x) => x !== f);
    faulted[op] = (faulted[op] ?? 0) + 1;
    return f;
  };

  const saveState = () => {
    if (!opts.stateFile) return;
    const tmp = `${opts.stateFile}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(store.exportState()) + '\n', { mode: 0o600 });
    fs.renameSync(tmp, opts.stateFile);
  };

  const send = (res: http.ServerResponse, status: number, body: unknown) => {
    if (res.destroyed) return;
    const text = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': Buffer.byteLength(text), 'x-amzn-RequestId': crypto.randomUUID() });
    res.end(text);
  };
  const sendFault = (res: http.ServerResponse, f: AwsFault) => send(res, f.status, { __type: f.type, message: f.message });

  async function control(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const what = req.url!.slice(CONTROL.length);
    const reply = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
    };
    try {
      if (what === 'stats' && req.method === 'GET') return reply(200, server.stats());
      if (what === 'reset' && req.method === 'POST') return (server.reset(), reply(200, {}));
      if (what === 'faults' && req.method === 'DELETE') return (server.clearFaults(), reply(200, {}));
      if (what === 'faults' && req.method === 'POST') {
        const parsed: unknown = JSON.parse((await readBody(req)).toString('utf8'));
        for (const f of Array.isArray(parsed) ? parsed : [parsed]) server.addFault(checkFault(f));
        return reply(200, { faults: faults.length });
      }
      return reply(404, { error: `unknown control request ${req.method} ${req.url}` });
    } catch (err) {
      return reply(400, { error: (err as Error).message });
    }
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.url!.startsWith(CONTROL)) return control(req, res);
    const target = req.headers['x-amz-target'];
    if (req.method !== 'POST' || (req.url !== '/' && !req.url!.startsWith('/?'))) {
      return sendFault(res, new AwsFault(404, 'UnknownOperationException', `the AWS KMS protocol is POST / (got ${req.method} ${req.url})`));
    }
    let body: Buffer;
    try {
      body = await readBody(req);
    } catch (err) {
      return sendFault(res, err instanceof AwsFault ? err : new AwsFault(400, 'SerializationException', 'could not read the request body'));
    }
    if (typeof target !== 'string' || !target.startsWith(TARGET_PREFIX)) {
      return sendFault(res, new AwsFault(400, 'UnknownOperationException', 'X-Amz-Target must be TrentService.<Operation>'));
    }
    const op = target.slice(TARGET_PREFIX.length);
    calls[op] = (calls[op] ?? 0) + 1;
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
    if (contentType !== JSON_TYPE) {
      return sendFault(res, new AwsFault(400, 'SerializationException', `Content-Type must be ${JSON_TYPE}, not '${contentType}'`));
    }
    const denied = verifySigV4({ method: req.method, url: req.url!, rawHeaders: req.rawHeaders }, body, opts.credentials, region);
    if (denied) {
      log(`${op} -> ${denied.status} ${denied.type}`);
      return sendFault(res, new AwsFault(denied.status, denied.type, denied.message));
    }

    const fault = takeFault(op);
    if (fault) {
      log(`${op} -> injected fault: ${fault.kind}`);
      switch (fault.kind) {
        case 'throttle':
          return sendFault(res, new AwsFault(400, 'ThrottlingException', fault.message ?? 'Rate exceeded'));
        case 'server-error': {
          const status = fault.status ?? 500;
          const type = fault.type ?? (status === 503 ? 'ServiceUnavailableException' : 'KMSInternalException');
          return sendFault(
            res,
            new AwsFault(status, type, fault.message ?? 'The request was rejected because an internal exception occurred. The request can be retried.'),
          );
        }
        case 'error':
          return sendFault(
            res,
            new AwsFault(fault.status ?? 400, fault.type ?? 'AccessDeniedException', fault.message ?? 'User is not authorized to perform this operation'),
          );
        case 'drop':
          req.socket.destroy();
          return;
        case 'malformed':
          res.writeHead(200, { 'Content-Type': JSON_TYPE, 'x-amzn-RequestId': crypto.randomUUID() });
          res.end('{"KeyId": "arn:aws:kms:trunc');
          return;
        case 'slow':
          await new Promise<void>((resolve) => {
            const timer = setTimeout(() => (timers.delete(timer), resolve()), fault.delayMs ?? 60_000);
            timers.add(timer);
            res.once('close', () => (clearTimeout(timer), timers.delete(timer), resolve()));
          });
          if (res.destroyed || res.writableEnded) return;
          break;
      }
    }

    let input: Record<string, unknown>;
    try {
      const parsed: unknown = body.length === 0 ? {} : JSON.parse(body.toString('utf8'));
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
      input = parsed as Record<string, unknown>;
    } catch {
      return sendFault(res, new AwsFault(400, 'SerializationException', 'Start of structure or map found where not expected.'));
    }
    try {
      const out = store.handle(op, input);
      if (MUTATING.has(op)) saveState();
      log(`${op} -> 200`);
      send(res, 200, out);
    } catch (err) {
      const f = err instanceof AwsFault ? err : new AwsFault(500, 'KMSInternalException', `test double failure: ${(err as Error).message}`);
      log(`${op} -> ${f.status} ${f.type}`);
      sendFault(res, f);
    }
  }

  const listener = (req: http.IncomingMessage, res: http.ServerResponse) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendFault(res, new AwsFault(500, 'KMSInternalException', `test double failure: ${(err as Error).message}`));
      else res.destroy();
    });
  };
  const httpServer = opts.tls ? https.createServer({ key: opts.tls.key, cert: opts.tls.cert }, listener) : http.createServer(listener);
  // Keep idle connections about as long as AWS does, so clients seldom race a server-side close.
  httpServer.keepAliveTimeout = 60_000;
  httpServer.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(opts.port ?? 0, host, () => resolve());
  });
  const address = httpServer.address() as net.AddressInfo;
  const hostPart = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  const server: DevKmsServer = {
    url: `${opts.tls ? 'https' : 'http'}://${hostPart}:${address.port}`,
    port: address.port,
    region,
    accountId,
    addFault(fault) {
      faults.push({ ...checkFault(fault), left: fault.times ?? 1 });
    },
    clearFaults() {
      faults = [];
    },
    stats() {
      return { calls: { ...calls }, faulted: { ...faulted }, ...store.counts() };
    },
    reset() {
      faults = [];
      calls = {};
      faulted = {};
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      const closed = new Promise<void>((resolve) => httpServer.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
  return server;
}
