/**
 * Grants (src-native/node/grants.c): after the KeyService has checked and run
 * a SIGN with a key that lives in this process, the same operation may run
 * again without the KeyService's dispatch: on the caller's thread in the
 * in-process mode, by the agent's serving threads for that peer
 * (src-native/node/serve.c). Likewise a peer's DESCRIBE, answered by the
 * KeyService from its cache of descriptions: the threads give that peer the
 * same reply while the cache holds it (a process per command describes its
 * key every time).
 * The KeyService decides every grant (KeyService.grant); this keeps the table
 * in step: a deleted key's grants end, and all of them end on close.
 */
import { native } from './native.js';
import type { KeyService, Peer } from './keyservice.js';
import type { Digest, SignAlgorithm } from './types.js';
import { parseKeyUri } from './uri.js';
import { MsgType, REPLY_BIT, Tag, encodeFrame, type Frame } from './wire/codec.js';
import { Fields, describeToFields } from './wire/fields.js';

export interface GrantsOptions {
  /** Where granted operations write their audit line (-1: none). */
  auditFd: number;
  /**
   * Keys on PKCS#11 tokens: how many of the agent's serving threads may sign
   * inside one module at once (0 or absent: no PKCS#11 grants). Only for the
   * agent's peers; in-process callers are the application's own threads.
   */
  pkcs11MaxInside?: number;
}

export class Grants {
  private closed = false;

  constructor(
    private readonly ks: KeyService,
    private readonly opts: GrantsOptions,
  ) {}

  /**
   * After a request succeeded; peer: the agent peer the grant is for, by uid and gid, both of which
   * the KeyService's access check read (undefined: any caller in this process).
   */
  afterSuccess(req: Frame, peer?: Pick<Peer, 'uid' | 'gid'>): void {
    if (this.closed) return;
    const f = new Fields(req.fields);
    // A key made anew under a name whose file was deleted behind the KeyService's back: nothing granted of the old one.
    const created = req.type === MsgType.CREATE ? f.string(Tag.KEYRING) : undefined;
    if (created !== undefined) return native().revokeKeyringGrants(created);
    const uri = f.string(Tag.URI);
    if (uri === undefined) return;
    if (req.type === MsgType.DELETE) return native().revokeGrants(uri);
    if (req.type === MsgType.DESCRIBE) {
      if (peer !== undefined) this.grantDescribe(uri, peer);
      return;
    }
    if (req.type !== MsgType.SIGN) return;
    const algorithm = f.string(Tag.ALGORITHM) as SignAlgorithm;
    const digest = f.string(Tag.DIGEST) as Digest | undefined;
    const mgf1Digest = f.string(Tag.MGF1_DIGEST) as Digest | undefined;
    const saltLength = f.u32(Tag.SALT_LENGTH);
    const optional = { ...(mgf1Digest ? { mgf1Digest } : {}), ...(saltLength !== undefined ? { saltLength } : {}) };
    const maxInside = peer !== undefined ? (this.opts.pkcs11MaxInside ?? 0) : 0;
    const request = { algorithm, data: f.requireBytes(Tag.DATA), ...(digest ? { digest } : {}), ...optional };
    void this.ks.grant(uri, request, { tokenThreads: maxInside }).then((g) => {
      if (!g || this.closed) return;
      const base = {
        uri,
        keyring: g.keyring,
        algorithm,
        ...(digest ? { digest } : {}),
        ...optional,
        dataLength: g.dataLength,
        auditFd: this.opts.auditFd,
        ...(peer !== undefined ? { uid: peer.uid, gid: peer.gid } : {}),
      };
      try {
        if (!('pkcs11' in g)) native().grantSign({ ...base, key: g.key, file: g.file, ino: g.ino, mtimeMs: g.mtimeMs, size: g.size });
        else if (g.stillValid()) native().grantSign({ ...base, pkcs11: g.pkcs11 });
      } catch {
        // No grant (the table is full, the module is not the one loaded): the KeyService keeps answering.
      }
    });
  }

  /**
   * The reply the dispatcher gives a DESCRIBE of uri, made now from the KeyService's cache, for this peer only (whose
   * access to the keyring the dispatcher has just checked). Taken from the cache at this moment, not from the reply
   * sent: a key deleted or made anew meanwhile has no description cached, or a new one.
   */
  private grantDescribe(uri: string, peer: Pick<Peer, 'uid' | 'gid'>): void {
    let current;
    try {
      current = this.ks.cachedDescription(uri);
      if (!current) return;
    } catch {
      return; // a keyring gone: the KeyService answers
    }
    try {
      const reply = encodeFrame({ id: 0, type: MsgType.DESCRIBE | REPLY_BIT, status: 0, fields: describeToFields(current.description) });
      const { uid, gid } = peer;
      native().grantDescribe({ uri, keyring: parseKeyUri(uri).keyring, uid, gid, reply, auditFd: this.opts.auditFd, ...current.source });
    } catch {
      // No grant (the table is full): the KeyService keeps answering.
    }
  }

  /** No grant from here on, and none left. */
  close(): void {
    this.closed = true;
    native().revokeGrants();
  }
}
