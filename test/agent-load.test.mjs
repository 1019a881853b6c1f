// Load on the agent: N signatures (10,000 by default) from 64 concurrent
// clients, each with a few requests in flight, zero errors; every signature
// verified (node:crypto, and a sample again by the system openssl); the
// agent's RSS read from /proc before, after one round and after a second
// round, which must not keep growing. KMSBRIDGE_LOAD_SIGNATURES sets N.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { sandbox, cliOk, startAgent, opensslOk } from './lib/env.mjs';
import { AgentClient } from '../dist/agent/client.js';
import { MsgType, Tag } from '../dist/wire/codec.js';

const TOTAL = Number(process.env.KMSBRIDGE_LOAD_SIGNATURES ?? 10_000);
const CLIENTS = 64;
const IN_FLIGHT = 4;

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

t.test(`${TOTAL} signatures from ${CLIENTS} concurrent clients through the agent: zero errors, all verify, RSS bounded`, async (t) => {
  const box = sandbox(t);
  const agent = await startAgent(t, box);
  const uri = cliOk(t, box, ['keys', 'create', 'load', '--keyring', 'local', '--type', 'ec-p256']).trim();
  const pem = cliOk(t, box, ['keys', 'export', uri]);
  const pub = crypto.createPublicKey(pem);
  fs.writeFileSync(box.file('load.pub.pem'), pem);

  const round = async (tag) => {
    const clients = await Promise.all(Array.from({ length: CLIENTS }, () => AgentClient.connect(box.socket, { timeoutMs: 60_000 })));
    let next = 0;
    let ok = 0;
    const errors = [];
    const samples = [];
    const started = Date.now();
    await Promise.all(
      clients.flatMap((c, ci) =>
        Array.from({ length: IN_FLIGHT }, async () => {
          for (let i = next++; i < TOTAL; i = next++) {
            const msg = Buffer.from(`${tag} ${ci} ${i}`);
            try {
              const f = await c.request(MsgType.SIGN, [
                { tag: Tag.URI, value: uri },
                { tag: Tag.ALGORITHM, value: 'ecdsa' },
                { tag: Tag.DIGEST, value: 'sha256' },
                { tag: Tag.DATA, value: crypto.createHash('sha256').update(msg).digest() },
              ]);
              const sig = f.requireBytes(Tag.RESULT);
              if (crypto.verify('sha256', msg, pub, sig)) ok++;
              else errors.push(`bad signature for ${msg}`);
              if (i % 2500 === 0) samples.push([msg, sig]);
            } catch (e) {
              errors.push(`${e.codeName ?? e.name}: ${e.message}`);
            }
          }
        }),
      ),
    );
    const ms = Date.now() - started;
    clients.forEach((c) => c.close());
    return { ok, errors, samples, ms };
  };

  // warm up (JIT, key cache), then measure
  const warm = await round('warm');
  t.same(warm.errors, []);
  const rss0 = rssKiB(agent.child.pid);
  const r1 = await round('one');
  const rss1 = rssKiB(agent.child.pid);
  const r2 = await round('two');
  const rss2 = rssKiB(agent.child.pid);
  for (const [i, r] of [r1, r2].entries()) {
    t.same(r.errors.slice(0, 5), [], `round ${i + 1}: zero errors`);
    t.equal(r.ok, TOTAL, `round ${i + 1}: ${r.ok} signatures verified (node:crypto) in ${r.ms} ms, ${Math.round((TOTAL * 1000) / r.ms)}/s`);
  }
  for (const [j, [msg, sig]] of r1.samples.entries()) {
    fs.writeFileSync(box.file(`s${j}.msg`), msg);
    fs.writeFileSync(box.file(`s${j}.sig`), sig);
    opensslOk(t, ['dgst', '-sha256', '-verify', box.file('load.pub.pem'), '-signature', box.file(`s${j}.sig`), box.file(`s${j}.msg`)]);
  }
  t.comment(`agent RSS: ${rss0} KiB after warm-up, ${rss1} KiB after ${TOTAL}, ${rss2} KiB after ${2 * TOTAL}`);
  t.ok(rss1 - rss0 < 64 * 1024, `RSS grew ${rss1 - rss0} KiB over the first round (< 64 MiB)`);
  t.ok(rss2 - rss1 < 32 * 1024, `RSS grew ${rss2 - rss1} KiB over the second round (< 32 MiB): bounded, not per-request`);
  const audit = fs.readFileSync(box.file('audit.log'), 'utf8').trim().split('\n');
  t.ok(audit.length >= 3 * TOTAL, `${audit.length} audit lines`);
});
