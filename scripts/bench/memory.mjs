// Measurement 6 helpers, run as child processes.
//   memory.mjs keys <socket> <keyring> <count>: creates |count| P-256 keys through the
//     agent, then DESCRIBEs and SIGNs with each (the agent now holds each key loaded),
//     and prints {"created","known"}.
//   memory.mjs node <plain|require|load>: prints this process's RSS in KiB after
//     importing https and crypto, plus (require) the addon, or (load) kmsbridge.load().
import { createRequire } from 'node:module';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

const require = createRequire(import.meta.url);
const [what, ...args] = process.argv.slice(2);

function rssKiB() {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]);
}

if (what === 'keys') {
  const [socket, keyring, countArg] = args;
  const count = Number(countArg);
  const { AgentClient } = require('../../dist/agent/client.js');
  const { MsgType, Tag } = require('../../dist/wire/codec.js');
  const clients = await Promise.all(Array.from({ length: 8 }, () => AgentClient.connect(socket, { timeoutMs: 60_000, peerName: 'kmsbridge-bench' })));
  const digest = crypto.createHash('sha256').update('x').digest();
  const each = async (fn) => {
    let next = 0;
    await Promise.all(
      clients.map(async (c) => {
        for (let i = next++; i < count; i = next++) await fn(c, i);
      }),
    );
  };
  await each((c, i) =>
    c.request(MsgType.CREATE, [
      { tag: Tag.KEYRING, value: keyring },
      { tag: Tag.NAME, value: `k${i}` },
      { tag: Tag.KEY_SPEC, value: 'ec-p256' },
    ]),
  );
  await each(async (c, i) => {
    const uri = `kms:${keyring}/k${i}`;
    await c.request(MsgType.DESCRIBE, [{ tag: Tag.URI, value: uri }]);
    await c.request(MsgType.SIGN, [
      { tag: Tag.URI, value: uri },
      { tag: Tag.ALGORITHM, value: 'ecdsa' },
      { tag: Tag.DIGEST, value: 'sha256' },
      { tag: Tag.DATA, value: digest },
    ]);
  });
  for (const c of clients) c.close();
  console.log(JSON.stringify({ created: count, known: count }));
} else if (what === 'node') {
  void https;
  let kb;
  if (args[0] === 'require') require('../../dist/native.js').native();
  if (args[0] === 'load') kb = await (await import('../../dist/index.js')).default.load();
  await new Promise((r) => setTimeout(r, 300));
  globalThis.gc?.();
  console.log(JSON.stringify({ rssKiB: rssKiB() }));
  await kb?.close();
} else {
  throw new Error('memory.mjs keys|node');
}
