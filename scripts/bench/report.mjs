// Turns a run's results into latest.md (tables), latest.json (everything,
// per round) and latest.svg (a chart drawn here, no tools needed), and puts
// the headline table into the README between its bench markers.
import fs from 'node:fs';
import path from 'node:path';
import { fmt, fmtRatio, summarize } from './stats.mjs';

const README_BEGIN = '<!-- bench:begin (written by npm run bench) -->';
const README_END = '<!-- bench:end -->';

const pick = (cell, metric) => (cell ? cell.rounds.map((x) => (x ? x[metric] : null)) : []);

function rowsOf(results, section) {
  return results.rows.filter((r) => r.section === section);
}

/** A variant's figure in a row against another variant of the same row, round by round. */
function vs(row, variant, base, metric) {
  const cell = row.cells[variant];
  if (!cell || cell.error || !row.cells[base] || row.cells[base].error) return null;
  return summarize(pick(cell, metric), pick(row.cells[base], metric));
}

function table(header, lines) {
  return [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? ':--' : '--:')).join('|')}|`, ...lines.map((l) => `| ${l.join(' | ')} |`)].join(
    '\n',
  );
}

function cellText(row, v, base, metric, scale = 1) {
  const c = row.cells[v];
  if (!c) return '';
  if (c.error) return 'skipped¹';
  const scaled = (cell) => pick(cell, metric).map((x) => (x === null || x === undefined ? null : x * scale));
  const s = summarize(scaled(c), base && v !== base && row.cells[base] && !row.cells[base].error ? scaled(row.cells[base]) : null);
  return `${fmt(s.median)}${s.ratio ? ` (${fmtRatio(s.ratio)})` : ''}`;
}

function skipped(results) {
  const seen = new Map();
  for (const row of results.rows)
    for (const [v, c] of Object.entries(row.cells))
      if (c.error && !seen.has(`${v}: ${c.error}`)) seen.set(`${v}: ${c.error}`, `${results.variants[v] ?? v}: ${c.error}`);
  return [...seen.values()];
}

export function goals(results) {
  const out = [];
  const add = (goal, s, target, higherIsBetter, unit = 'ratio', optional = false) => {
    if (!s && optional) return; // the peer cannot do it (see the skipped list)
    if (!s) return out.push({ goal, measured: 'not measured', met: null });
    const value = unit === 'ratio' ? s.ratio?.median : s.median;
    const met = value === null || value === undefined ? null : higherIsBetter ? value >= target : value <= target;
    const measured = unit === 'ratio' ? fmtRatio(s.ratio) : `${fmt(s.median)} µs [${fmt(s.min)}–${fmt(s.max)}]`;
    out.push({ goal, measured, met });
  };
  for (const row of rowsOf(results, 'tls').filter((r) => r.key.server === 's_server')) {
    const t = row.key.alg === 'RSA-2048' ? 0.9 : 0.95;
    add(`s_server TLS ${row.key.tls} ${row.key.alg} handshakes/s, provider ÷ file ≥ ${t}`, vs(row, 'provider', 'file', 'perSec'), t, true);
  }
  for (const row of rowsOf(results, 'sign').filter((r) => r.key.threads === 1 && ['RSA-2048', 'P-256'].includes(r.key.alg))) {
    const t = row.key.alg === 'RSA-2048' ? 0.9 : 0.5;
    add(`signs/s ${row.key.alg} (1 thread), provider ÷ file ≥ ${t}`, vs(row, 'provider', 'file', 'opsPerSec'), t, true);
  }
  for (const row of rowsOf(results, 'pkeyutl'))
    add(`pkeyutl ${row.key.alg} time per command, provider ÷ file ≤ 1.2`, vs(row, 'provider', 'file', 'latUsMedian'), 1.2, false);
  for (const row of rowsOf(results, 'tls').filter((r) => r.key.server === 'node')) {
    add(`Node TLS ${row.key.tls} ${row.key.alg} handshakes/s, in-process ÷ PEM ≥ 0.9`, vs(row, 'node-keyref', 'node-pem', 'perSec'), 0.9, true);
  }
  const ping = rowsOf(results, 'ping')[0];
  for (const [v, t, name] of [
    ['agent', 30, 'agent socket no-op median ≤ 30 µs'],
    ['napi', 15, 'N-API bridge no-op median ≤ 15 µs'],
  ]) {
    const c = ping?.cells[v];
    const xs = c && !c.error ? pick(c, 'latUsMedian').filter(Number.isFinite) : [];
    add(name, xs.length ? { ...summarize(xs), min: Math.min(...xs), max: Math.max(...xs) } : null, t, false, 'abs');
  }
  // ahead of the peer: kmsbridge's PKCS#11 route and its agent route against libp11 on the same token
  for (const row of rowsOf(results, 'sign').filter((r) => r.key.threads === 1)) {
    add(`signs/s ${row.key.alg} (1 thread), kmsbridge → SoftHSM2 ÷ libp11 ≥ 1`, vs(row, 'hsm', 'libp11', 'opsPerSec'), 1, true, 'ratio', true);
  }
  for (const row of rowsOf(results, 'pkeyutl'))
    add(`pkeyutl ${row.key.alg}, kmsbridge → SoftHSM2 ÷ libp11 ≤ 1`, vs(row, 'hsm', 'libp11', 'latUsMedian'), 1, false);
  for (const row of rowsOf(results, 'tls').filter((r) => r.key.server === 's_server')) {
    add(`s_server TLS ${row.key.tls} ${row.key.alg}, kmsbridge → SoftHSM2 ÷ libp11 ≥ 1`, vs(row, 'hsm', 'libp11', 'perSec'), 1, true);
  }
  return out;
}

function machineLine(m) {
  return `${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB; ${m.os}; ${m.openssl}; Node ${m.node} (its OpenSSL ${m.nodeOpenssl}); SoftHSM ${m.softhsm}; libp11 ${m.libp11}; kmsbridge ${m.commit}; load average ${m.loadavg.join(' ')} at start, ${m.loadavgEnd?.join(' ') ?? '?'} at end`;
}

function goalsTable(results) {
  return table(
    ['goal (ratios: medians of per-round ratios, [min–max])', 'measured', 'met'],
    goals(results).map((g) => [g.goal, g.measured, g.met === null ? '–' : g.met ? 'yes' : '**no**']),
  );
}

export function markdown(results) {
  const V = results.variants;
  const p = results.plan;
  const parts = [];
  parts.push(`# kmsbridge benchmarks${p.quick ? ' (quick run)' : ''}`);
  parts.push(
    `Written by \`npm run bench${p.quick ? ' -- --quick' : ''}\` on ${results.started.slice(0, 10)} in ${results.seconds} s. **Machine:** ${machineLine(results.machine)}.`,
  );
  parts.push(
    `Each figure is the median over ${p.rounds} rounds (TLS handshakes: ${p.tlsRounds ?? p.rounds}); in every round all variants of a row run one after another (in a rotated order), and each is divided by the baseline measured in the same round. A ratio reads "median× [min–max]" over those per-round ratios. The machine is shared and drifts, so ratios are the figures to compare; absolute numbers are this machine's only.`,
  );
  parts.push('## Goals\n\n' + goalsTable(results) + '\n\nWhere the time goes, and what was changed for it: [notes.md](notes.md).');

  const sign = rowsOf(results, 'sign');
  if (sign.length) {
    const vs1 = ['file', 'provider', 'engine', 'hsm', 'libp11', 'node-pem', 'node-kms'];
    const hdr = ['key × threads', ...vs1.map((v) => V[v])];
    const base = (v) => (v === 'node-kms' ? 'node-pem' : 'file');
    parts.push(
      `## 1. Signatures per second (ratio to the PEM file key; (d) to Node with a PEM key)\n\nEVP_PKEY_sign (EVP_DigestSign for Ed25519) on a key loaded through OSSL_STORE (ENGINE_load_private_key for the engines), a new EVP_PKEY_CTX per signature, ${p.signSeconds} s per figure; PKCS#1 v1.5 for RSA, SHA-256 (SHA-384 for P-384). Node: crypto.sign; with N > 1, N callback-style calls in flight on a libuv pool of N + 4 threads.\n\n` +
        table(
          hdr,
          sign.map((row) => [`${row.key.alg} × ${row.key.threads}`, ...vs1.map((v) => cellText(row, v, base(v), 'opsPerSec'))]),
        ),
    );
    parts.push(
      `### µs per signature (median latency of one call; ratio to the PEM file key)\n\n` +
        table(
          hdr,
          sign.map((row) => [`${row.key.alg} × ${row.key.threads}`, ...vs1.map((v) => cellText(row, v, base(v), 'latUsMedian'))]),
        ),
    );
  }
  const pk = rowsOf(results, 'pkeyutl');
  if (pk.length) {
    const vs2 = ['file', 'provider', 'engine', 'hsm', 'libp11'];
    parts.push(
      `## 2. \`openssl pkeyutl -sign\`, ms per command (process start included; ratio to the PEM file key)\n\n${p.pkeyutlCount} commands per round, median.\n\n` +
        table(
          ['key', ...vs2.map((v) => V[v])],
          pk.map((row) => [row.key.alg, ...vs2.map((v) => cellText(row, v, 'file', 'latUsMedian', 0.001))]),
        ),
    );
  }
  const tls = rowsOf(results, 'tls');
  if (tls.length) {
    for (const [kind, vars, base, title] of [
      ['s_server', ['file', 'provider', 'engine', 'hsm', 'libp11'], 'file', '`openssl s_server`'],
      ['node', ['node-pem', 'node-agent', 'node-engine', 'node-keyref', 'node-pkcs11'], 'node-pem', 'Node `https` server'],
    ]) {
      const rs = tls.filter((r) => r.key.server === kind);
      if (!rs.length) continue;
      const hdr = ['TLS, key', ...vars.map((v) => V[v])];
      const label = (row) => `${row.key.tls}, ${row.key.alg}`;
      parts.push(
        `## 3. Full TLS handshakes per second: ${title} (ratio to ${V[base]})\n\nNew connection and full handshake each time (no session, no ticket, no CA store), ${p.tlsThreads} client threads, ${p.tlsSeconds} s per figure.\n\n` +
          table(
            hdr,
            rs.map((row) => [label(row), ...vars.map((v) => cellText(row, v, base, 'perSec'))]),
          ),
      );
      parts.push(
        `### CPU µs per handshake: server process + agent (ratio to ${V[base]})\n\n` +
          table(
            hdr,
            rs.map((row) => [label(row), ...vars.map((v) => cellText(row, v, base, 'totalCpuUs'))]),
          ) +
          `\n\n### CPU µs per handshake: server process only\n\n` +
          table(
            hdr,
            rs.map((row) => [label(row), ...vars.map((v) => cellText(row, v, null, 'serverCpuUs'))]),
          ),
      );
    }
  }
  const ping = rowsOf(results, 'ping')[0];
  if (ping) {
    const line = (v, name) => {
      const c = ping.cells[v];
      if (!c || c.error) return [name, 'skipped¹', '', ''];
      const med = pick(c, 'latUsMedian').filter(Number.isFinite);
      const p99 = pick(c, 'latUsP99').filter(Number.isFinite);
      return [
        name,
        `${fmt(summarize(med).median)} [${fmt(Math.min(...med))}–${fmt(Math.max(...med))}]`,
        `${fmt(summarize(p99).median)} [${fmt(Math.min(...p99))}–${fmt(Math.max(...p99))}]`,
        String(p.pingCount),
      ];
    };
    parts.push(
      `## 4. The channel itself: a no-op (PING) round trip, µs\n\nMedian over rounds of each round's median and p99 [min–max of those].\n\n` +
        table(
          ['channel', 'median µs', 'p99 µs', 'calls per round'],
          [
            line('agent', 'agent socket (kbbench → channel_agent.c → agent)'),
            line('napi', 'N-API bridge (main thread → KeyService worker, channelPing)'),
            line('pair-processes', 'for comparison: a socketpair between two processes, each sleeping in read()'),
            line('pair-threads', 'for comparison: the same between two threads of one process'),
          ],
        ) +
        "\n\nThe last two are the machine's own price of a round trip whose two sides sleep until the other writes (`kbbench pingpong`, no kmsbridge code): what a caller that waits for the agent pays in wake-ups. The agent socket and the bridge poll for a reply that comes quickly (notes.md), so they can be below it.\n",
    );
  }
  const slow = rowsOf(results, 'slow');
  if (slow.length) {
    parts.push(
      `## 5. Slow key managers: Node https handshakes per second (P-256, TLS 1.3) with \`inject_latency_ms\`\n\nOne process against node:cluster with ${p.slowProcesses} processes, each calling kmsbridge.load() (docs/node-scaling.md); ${p.slowSeconds} s per figure, ${p.slowRounds} round(s); ratio: cluster ÷ one process.\n\n` +
        table(
          ['latency, concurrent clients', 'one process', `cluster × ${p.slowProcesses}`, 'one process: CPU µs/handshake'],
          slow.map((row) => [
            `${row.key.latencyMs} ms, ${row.key.clients}`,
            cellText(row, 'single', null, 'perSec'),
            cellText(row, 'cluster', 'single', 'perSec'),
            cellText(row, 'single', null, 'serverCpuUs'),
          ]),
        ),
    );
  }
  const m = results.memory;
  if (m) {
    const mib = (k) => (k ? `${(k / 1024).toFixed(1)} MiB` : '–');
    parts.push(
      `## 6. Memory (RSS)\n\n` +
        table(
          ['process', 'RSS'],
          [
            ['agent, empty keyring', mib(m.agentEmptyRssKiB)],
            [
              `agent after ${m.agentKeys ?? '?'} keys created, described and used once`,
              `${mib(m.agentKeysRssKiB)}${m.agentKeysRssKiB && m.agentEmptyRssKiB ? ` (+${(((m.agentKeysRssKiB - m.agentEmptyRssKiB) * 1024) / (m.agentKeys || 1) / 1024).toFixed(1)} KiB per key)` : ''}${m.agentError ? ` (${m.agentError})` : ''}`,
            ],
            ['agent used by the whole run', mib(m.agentMainRssKiB)],
            ['Node (https, crypto imported)', mib(m.node_plain_RssKiB)],
            ['Node + the addon loaded (provider registered)', mib(m.node_require_RssKiB)],
            ['Node after kmsbridge.load() (KeyService worker running)', mib(m.node_load_RssKiB)],
          ],
        ),
    );
  }
  const sk = skipped(results);
  if (sk.length) parts.push(`¹ Skipped:\n\n${sk.map((s) => `- ${s}`).join('\n')}`);
  return parts.join('\n\n') + '\n';
}

/** The README's Performance table: the goals, and where the rest is. */
export function readmeBlock(results) {
  return [
    README_BEGIN,
    `Latest full run (${results.started.slice(0, 10)}; ${results.machine.cpu}, ${results.machine.cores} cores, ${results.machine.openssl}, Node ${results.machine.node}):`,
    '',
    goalsTable(results),
    '',
    'All figures, per variant and round: [docs/bench/latest.md](docs/bench/latest.md) ([JSON](docs/bench/latest.json), [chart](docs/bench/latest.svg)).',
    README_END,
  ].join('\n');
}

// ---- the chart --------------------------------------------------------------------------

const COLORS = {
  file: '#777',
  provider: '#1f77b4',
  engine: '#17becf',
  hsm: '#2ca02c',
  libp11: '#d62728',
  'node-pem': '#999',
  'node-kms': '#9467bd',
  'node-agent': '#1f77b4',
  'node-engine': '#17becf',
  'node-keyref': '#9467bd',
  'node-pkcs11': '#d62728',
};

function esc(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Horizontal bars: median ratio to the row's baseline with a min–max whisker, on a log scale. */
export function svg(results) {
  const groups = [];
  for (const row of rowsOf(results, 'sign').filter((r) => r.key.threads === 1)) {
    groups.push({
      title: `signs/s ${row.key.alg}, 1 thread`,
      bars: ['provider', 'engine', 'hsm', 'libp11', 'node-kms'].map((v) => [v, vs(row, v, v === 'node-kms' ? 'node-pem' : 'file', 'opsPerSec')]),
    });
  }
  for (const row of rowsOf(results, 'tls')) {
    const node = row.key.server === 'node';
    const vars = node ? ['node-agent', 'node-engine', 'node-keyref', 'node-pkcs11'] : ['provider', 'engine', 'hsm', 'libp11'];
    groups.push({
      title: `${node ? 'Node https' : 's_server'} TLS ${row.key.tls} ${row.key.alg} handshakes/s`,
      bars: vars.map((v) => [v, vs(row, v, node ? 'node-pem' : 'file', 'perSec')]),
    });
  }
  const W = 980;
  const left = 330;
  const plotW = W - left - 150;
  const barH = 11;
  const lo = Math.log10(0.01);
  const hi = Math.log10(2);
  const x = (r) => left + ((Math.log10(Math.min(2, Math.max(0.01, r))) - lo) / (hi - lo)) * plotW;
  const out = [];
  let y = 60;
  for (const g of groups) {
    const bars = g.bars.filter(([, s]) => s && s.ratio);
    if (!bars.length) continue;
    out.push(`<text x="${left - 8}" y="${y + 9}" text-anchor="end" font-weight="bold">${esc(g.title)}</text>`);
    for (const [v, s] of bars) {
      const r = s.ratio;
      out.push(`<text x="${left - 8}" y="${y + 22}" text-anchor="end" fill="#444">${esc(results.variants[v])}</text>`);
      out.push(`<rect x="${left}" y="${y + 13}" width="${Math.max(1, x(r.median) - left).toFixed(1)}" height="${barH}" fill="${COLORS[v] ?? '#555'}"/>`);
      out.push(`<line x1="${x(r.min).toFixed(1)}" x2="${x(r.max).toFixed(1)}" y1="${y + 18.5}" y2="${y + 18.5}" stroke="#000" stroke-width="1.2"/>`);
      out.push(`<text x="${(x(r.max) + 6).toFixed(1)}" y="${y + 22}" fill="#000">${esc(fmtRatio(r))}</text>`);
      y += 14;
    }
    y += 22;
  }
  const ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2];
  const axis = ticks.map(
    (t) =>
      `<line x1="${x(t).toFixed(1)}" x2="${x(t).toFixed(1)}" y1="40" y2="${y}" stroke="${t === 1 ? '#000' : '#ddd'}"/><text x="${x(t).toFixed(1)}" y="34" text-anchor="middle">${t}×</text>`,
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y + 30}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="18" font-size="14" font-weight="bold">kmsbridge vs a PEM file key (ratio, log scale; bar: median of per-round ratios, line: min–max) — ${esc(results.machine.cpu)}, ${results.machine.cores} cores, ${esc(results.started.slice(0, 10))}</text>`,
    ...axis,
    ...out,
    `<text x="10" y="${y + 20}" fill="#444">Node variants are divided by Node with a PEM key. Generated by npm run bench (scripts/bench/report.mjs).</text>`,
    '</svg>',
  ].join('\n');
}

export function writeReport(results, outDir, { readme } = {}) {
  fs.mkdirSync(outDir, { recursive: true });
  const base = results.plan.quick ? 'quick' : 'latest';
  const files = [path.join(outDir, `${base}.md`), path.join(outDir, `${base}.json`), path.join(outDir, `${base}.svg`)];
  fs.writeFileSync(files[0], markdown(results));
  fs.writeFileSync(files[1], JSON.stringify({ ...results, goals: goals(results) }, null, 1) + '\n');
  fs.writeFileSync(files[2], svg(results) + '\n');
  if (readme && fs.existsSync(readme)) {
    const text = fs.readFileSync(readme, 'utf8');
    const a = text.indexOf(README_BEGIN);
    const b = text.indexOf(README_END);
    if (a >= 0 && b > a) {
      fs.writeFileSync(readme, text.slice(0, a) + readmeBlock(results) + text.slice(b + README_END.length));
      files.push(readme);
    }
  }
  return files;
}
