#!/usr/bin/env node
// Runs the libFuzzer targets built by `make -C src-native fuzz` on the seed
// corpora of make-corpus.mjs, one after the other, and prints one JSON line
// per target: { target, execs, seconds, corpus, crash }.
//
//   node test/fuzz/run.mjs --seconds 20            # the CI run (each target)
//   node test/fuzz/run.mjs --runs 10000000         # the long run of docs/reliability.md
//   node test/fuzz/run.mjs --runs N wire uri       # some targets only
//
// A crash leaves its input in build/fuzz/artifacts/<target>/ and makes the
// exit status 1. Keep such an input as a regression seed under
// test/fuzz/regressions/<target>/ once the bug is fixed.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const build = path.join(root, 'build', 'fuzz');
const TARGETS = ['wire', 'keyref', 'uri'];

const argv = process.argv.slice(2);
const opt = (name) => {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return Number(v);
};
const seconds = opt('--seconds');
const runs = opt('--runs');
const targets = argv.length ? argv : TARGETS;
if (!seconds && !runs) {
  console.error('usage: run.mjs (--seconds N | --runs N) [wire|keyref|uri ...]');
  process.exit(2);
}

const gen = spawnSync(process.execPath, [path.join(here, 'make-corpus.mjs'), path.join(build, 'corpus')], { stdio: ['ignore', 'ignore', 'inherit'] });
if (gen.status !== 0) process.exit(1);

let failed = false;
for (const target of targets) {
  const exe = path.join(build, `fuzz_${target}`);
  if (!fs.existsSync(exe)) {
    console.error(`${exe} is not built: make -C src-native fuzz`);
    process.exit(1);
  }
  const work = path.join(build, 'work', target); // grows across runs; seeds stay read-only
  const artifacts = path.join(build, 'artifacts', target);
  fs.mkdirSync(work, { recursive: true });
  fs.mkdirSync(artifacts, { recursive: true });
  const args = [
    `-artifact_prefix=${artifacts}/`,
    '-print_final_stats=1',
    '-max_len=8192',
    '-timeout=10',
    '-rss_limit_mb=1024',
    ...(seconds ? [`-max_total_time=${seconds}`] : []),
    ...(runs ? [`-runs=${runs}`] : []),
    work,
    path.join(build, 'corpus', target),
  ];
  const started = Date.now();
  const child = spawn(exe, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1' } });
  let log = '';
  child.stderr.on('data', (d) => {
    log += d;
    if (log.length > 1 << 20) log = log.slice(-(1 << 19));
  });
  const code = await new Promise((r) => child.on('close', (c, s) => r(c ?? s)));
  const execs = Number(/stat::number_of_executed_units:\s*(\d+)/.exec(log)?.[1] ?? 0);
  const crash = /(?:crash|leak|timeout|oom)-[0-9a-f]+/.exec(log)?.[0] ?? null;
  const result = { target, execs, seconds: Math.round((Date.now() - started) / 1000), corpus: fs.readdirSync(work).length, exit: code, crash };
  console.log(JSON.stringify(result));
  if (code !== 0) {
    failed = true;
    console.error(
      log
        .split('\n')
        .filter((l) => /ERROR|SUMMARY|#\d+ 0x|runtime error|artifact/.test(l))
        .slice(0, 40)
        .join('\n'),
    );
  }
}
process.exit(failed ? 1 : 0);
