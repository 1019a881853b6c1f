// Raw frames to the agent, for tests that drive its serving threads
// (src-native/node/serve.c) with pipelined, split or never-read requests.
import crypto from 'node:crypto';
import net from 'node:net';
import { FrameReader, MsgType, Tag, encodeFrame } from '../../dist/wire/codec.js';

export const hello = (id = 1) => encodeFrame({ id, type: MsgType.HELLO, status: 0, fields: [{ tag: Tag.VERSION, value: 1 }] });
export const ping = (id) => encodeFrame({ id, type: MsgType.PING, status: 0, fields: [] });
export const signFrame = (id, uri, msg) =>
  encodeFrame({
    id,
    type: MsgType.SIGN,
    status: 0,
    fields: [
      { tag: Tag.URI, value: uri },
      { tag: Tag.ALGORITHM, value: 'ecdsa' },
      { tag: Tag.DIGEST, value: 'sha256' },
      { tag: Tag.DATA, value: crypto.createHash('sha256').update(msg).digest() },
    ],
  });
export const describe = (id, uri) => encodeFrame({ id, type: MsgType.DESCRIBE, status: 0, fields: [{ tag: Tag.URI, value: uri }] });

/** A raw connection: write bytes, collect reply frames by id. */
export function raw(socketPath) {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath);
    const reader = new FrameReader();
    const replies = new Map();
    let waiters = [];
    s.on('data', (d) => {
      for (const f of reader.push(d)) replies.set(f.id, f);
      waiters = waiters.filter((w) => !w());
    });
    s.on('error', () => {});
    s.once('connect', () =>
      resolve({
        s,
        replies,
        /** Resolves when |n| replies have arrived; rejects after |ms|. */
        until: (n, ms = 30_000) =>
          new Promise((ok, fail) => {
            const timer = setTimeout(() => fail(new Error(`${replies.size} of ${n} replies after ${ms} ms`)), ms);
            const check = () => replies.size >= n && (clearTimeout(timer), ok(replies), true);
            if (!check()) waiters.push(check);
          }),
        closed: new Promise((r) => s.once('close', r)),
      }),
    );
    s.once('error', reject);
  });
}
