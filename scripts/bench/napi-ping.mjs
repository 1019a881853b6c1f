// Measurement 4, the N-API bridge: no-op PING frames from the main thread
// to the in-process KeyService worker and back (the addon's channelPing hook).
// argv: <count> ; prints {"samples", "latUsMedian", "latUsP99", "latUsMean"}.
import { createRequire } from 'node:module';
import kmsbridge from '../../dist/index.js';

const require = createRequire(import.meta.url);
const { native } = require('../../dist/native.js');
const count = Number(process.argv[2] ?? 1000);
const kb = await kmsbridge.load();
native().channelPing(Math.min(200, count)); // warm-up: JIT, the worker's first requests
const ns = Array.from(native().channelPing(count)).sort((a, b) => a - b);
const q = (p) => ns[Math.min(ns.length - 1, Math.floor(ns.length * p))] / 1000;
console.log(
  JSON.stringify({
    mode: 'napi-ping',
    samples: ns.length,
    latUsMedian: q(0.5),
    latUsP99: q(0.99),
    latUsMean: ns.reduce((a, b) => a + b, 0) / ns.length / 1000,
  }),
);
await kb.close();
