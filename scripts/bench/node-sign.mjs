// Node's side of measurement 1(d): crypto.sign in one process for a while.
// argv: <pem file | kms: URI> <digest: sha256 | sha384 | none> <concurrency> <seconds>
// concurrency 1: synchronous crypto.sign on the main thread; N > 1: N
// callback-style crypto.sign calls in flight, run on libuv's threadpool
// (started with UV_THREADPOOL_SIZE = N + 1). Prints one JSON line like kbbench's.
import crypto from 'node:crypto';
import fs from 'node:fs';
import kmsbridge from '../../dist/index.js';

const [keyArg, digestArg, concArg, secondsArg] = process.argv.slice(2);
const desc = digestArg === 'none' ? null : digestArg;
const concurrency = Number(concArg);
const seconds = Number(secondsArg);
let kb;
let key;
if (keyArg.startsWith('kms:')) {
  kb = await kmsbridge.load();
  key = kb.privateKey(keyArg);
} else {
  key = crypto.createPrivateKey(fs.readFileSync(keyArg));
}
// (never asymmetricKeyDetails on a kms key: Node 20 aborts on it)
const pub = crypto.createPublicKey(key);
const data = Buffer.alloc(64, 7);

// one signature checked before timing
const first = crypto.sign(desc, data, key);
if (!crypto.verify(desc, data, pub, first)) throw new Error('the signature does not verify');

const lat = [];
let ops = 0;
const t0 = process.hrtime.bigint();
const end = t0 + BigInt(Math.round(seconds * 1e9));
if (concurrency <= 1) {
  for (let i = 0; i < 10_000_000; i++) {
    const s = process.hrtime.bigint();
    if (s >= end) break;
    crypto.sign(desc, data, key);
    lat.push(Number(process.hrtime.bigint() - s));
    ops++;
  }
} else {
  await Promise.all(
    Array.from(
      { length: concurrency },
      () =>
        new Promise((resolve, reject) => {
          const loop = () => {
            const s = process.hrtime.bigint();
            if (s >= end || ops >= 10_000_000) return resolve();
            crypto.sign(desc, data, key, (err) => {
              if (err) return reject(err);
              lat.push(Number(process.hrtime.bigint() - s));
              ops++;
              loop();
            });
          };
          loop();
        }),
    ),
  );
}
const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(lat.length * p))] / 1000 : 0);
console.log(
  JSON.stringify({
    mode: 'node-sign',
    threads: concurrency,
    ops,
    seconds: elapsed,
    opsPerSec: ops / elapsed,
    samples: lat.length,
    latUsMedian: q(0.5),
    latUsP99: q(0.99),
  }),
);
await kb?.close();
