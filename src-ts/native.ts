import path from 'node:path';
import nodeGypBuild from 'node-gyp-build';
import type { Peer } from './keyservice.js';
import type { FileIdentity } from './backends/backend.js';

/** A signature on a PKCS#11 token that the agent's serving threads may run (pkcs11_sign.c). */
export interface NativePkcs11Grant {
  /** The library path the backend loaded and initialized: found, never loaded, by the addon. */
  module: string;
  slot: number;
  object: number;
  /** How many serving threads may be inside the module at once; the others leave requests to the KeyService. */
  maxInside: number;
}

/** The slice of kmsbridge.node that the TypeScript side calls. */
export interface NativeKeyHandle {
  readonly __brand: 'NativeKeyHandle';
}
export interface NativeOpOptions {
  padding: 'pkcs1' | 'pss' | 'oaep' | 'none';
  digest?: string;
  mgf1Digest?: string;
  saltLength?: number;
  label?: Buffer;
}
export interface NativeAddon {
  loadPrivateKey(pkcs8: Buffer): NativeKeyHandle;
  sign(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer): Promise<Buffer>;
  decrypt(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer): Promise<Buffer>;
  /** sign and decrypt on the calling thread instead of libuv's pool. */
  signNow(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer): Buffer;
  decryptNow(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer): Buffer;
  /** A public key (SubjectPublicKeyInfo DER) for verify and encrypt. */
  loadPublicKey(spki: Buffer): NativeKeyHandle;
  /** Whether |signature| is valid over |data| (a digest; the message for Ed25519). A malformed signature is false. */
  verify(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer, signature: Buffer): Promise<boolean>;
  encrypt(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer): Promise<Buffer>;
  /** verify and encrypt on the calling thread instead of libuv's pool. */
  verifyNow(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer, signature: Buffer): boolean;
  encryptNow(key: NativeKeyHandle, options: NativeOpOptions, data: Buffer): Buffer;
  /**
   * The agent's connections, served by C threads (serve.c). onEvent gets one or more whole request
   * frames back to back that only JavaScript can answer, or null when the connection has closed
   * (reason: why; undefined for the peer's own orderly close).
   */
  /**
   * onEvent: peer given, a connection the threads accepted (before any of its frames); frames, its requests; neither,
   * it has closed (reason: why, undefined for the peer's own close). hello: the agent's reply (id 0) to a HELLO of
   * helloVersion, which the threads send to the peers serveListen's policy admits.
   */
  serveStart(
    onEvent: (id: number, frames: Buffer | null, reason?: string, peer?: Peer) => void,
    opts: { threads: number; maxInFlight: number; hello?: Buffer; helloVersion?: number },
  ): ServeHandle;
  /** Makes the listening socket at path (umask and directory are the caller's) and accepts on the threads. */
  serveListen(server: ServeHandle, path: string, policy: { ownUid: number; uids: number[]; gids: number[] } | null): void;
  /** Accepts no more connections; those accepted stay. */
  serveUnlisten(server: ServeHandle): void;
  /** Whether the threads accepted the connection's HELLO (a peer the policy admits): then they answer its PING and grants. */
  serveIsGreeted(server: ServeHandle, id: number): boolean;
  /** Queues a reply; end: close once it is sent. False if the connection has gone. */
  serveReply(server: ServeHandle, id: number, frame: Buffer, end: boolean): boolean;
  serveClose(server: ServeHandle, id: number): void;
  /** Whether frames handed to JavaScript wait to be taken. */
  serveQueued(server: ServeHandle): boolean;
  /** Ends the threads and closes every connection (sends what replies it can first); false if a thread is stuck in a PKCS#11 library. */
  serveStop(server: ServeHandle): boolean;
  /** Ends the process now (_exit), not joining a worker stuck in a PKCS#11 library. */
  exitStuck(code: number): never;
  /** The N-API bridge: the worker binds its request handler and answers each request. */
  bridgeBind(handler: (frame: Buffer, handle: BridgeHandle) => void): void;
  bridgeUnbind(): void;
  bridgeComplete(handle: BridgeHandle, reply: Buffer): void;
  /**
   * Grants (grants.c): lets this approved signature run without the KeyService's dispatch, on the
   * bridge caller's thread (uid absent) or for one agent peer (answerGranted). auditFd -1: no audit.
   */
  grantSign(
    grant: {
      uri: string;
      keyring: string;
      algorithm: string;
      /** Absent for Ed25519, which signs the message itself. */
      digest?: string;
      mgf1Digest?: string;
      saltLength?: number;
      /** The digest's length; 0 for Ed25519: a message of any length. */
      dataLength: number;
      auditFd: number;
      /** An agent peer's uid and gid, both (the KeyService's access check read both); absent: the bridge's callers. */
      uid?: number;
      gid?: number;
    } & ({ key: NativeKeyHandle; file: string; ino: number; mtimeMs: number; size: number } | { pkcs11: NativePkcs11Grant }),
  ): void;
  /**
   * Lets the agent's threads answer this peer's DESCRIBE of uri with reply (a DESCRIBE reply frame; its id is replaced);
   * file, ino, mtimeMs, size (all or none): the key file it was read from, while which it holds.
   */
  grantDescribe(grant: { uri: string; keyring: string; uid: number; gid: number; reply: Buffer; auditFd: number } & Partial<FileIdentity>): void;
  /** Ends the grants of one URI, or all of them. */
  revokeGrants(uri?: string): void;
  /** Ends every grant of one keyring (a PKCS#11 token reset, a delete, close). */
  revokeKeyringGrants(keyring: string): void;
  /**
   * After a keyring's grants are revoked: true once no serving thread is inside the PKCS#11 module
   * at `path` (pkcs11_sign.c), false after timeoutMs. The module may be finalized only after true.
   */
  pkcs11Quiesce(path: string, timeoutMs: number): boolean;
  /** What the agent's threads do with a peer's SIGN or DESCRIBE (serve.c): the reply frame if a grant for this uid and gid covered it, else null. */
  answerGranted(frame: Buffer, pid: number, uid: number, gid: number): Buffer | null;
  /** Whether the provider is registered in Node's OpenSSL (once per process). */
  registration(): { provider: boolean; engine: boolean; openssl: string; error?: string; engineError?: string };
  /** Which channel the in-process provider uses. */
  useChannel(kind: 'bridge' | 'none', timeoutMs?: number): void;
  useChannel(kind: 'agent', timeoutMs: number, socketPath: string): void;
  /** The KeyService's message for the last kmsbridge error raised on this thread. */
  lastError(): string;
}
export interface ServeHandle {
  readonly __brand: 'ServeHandle';
}
export interface BridgeHandle {
  readonly __brand: 'BridgeHandle';
}

let addon: NativeAddon | undefined;

/** The package root: dist/ and build/ sit side by side under it. */
export const PACKAGE_ROOT = path.resolve(__dirname, '..');

export function native(): NativeAddon {
  if (!addon) {
    try {
      addon = nodeGypBuild(PACKAGE_ROOT) as NativeAddon;
    } catch (err) {
      throw new Error(
        `the kmsbridge native addon is not built (${(err as Error).message.split('\n')[0]}); ` + `run 'npm rebuild kmsbridge' (needs make, gcc and libssl-dev)`,
      );
    }
  }
  return addon;
}
