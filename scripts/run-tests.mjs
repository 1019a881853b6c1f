#!/usr/bin/env node
// Runs the node-tap suite and ends with the line CI reads: `N passed, N failed`.
// A test here is a scenario (a subtest of a test file); a test file that dies
// before reporting its scenarios counts as one failure.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const files = args.length
  ? args
  : fs
      .readdirSync(path.join(root, 'test'), { recursive: true })
      .filter((f) => f.endsWith('.test.mjs'))
      .map((f) => path.join('test', f))
      .sort();

const tap = path.join(root, 'node_modules', '.bin', 'tap');
const child = spawn(tap, ['--disable-coverage', '--reporter=tap', '--timeout=900', '--jobs=2', ...files], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, TAP_COLORS: '0' },
});

let passed = 0;
let failed = 0;
let skipped = 0;
let fileHadScenarios = false;
let buffer = '';
const count = (ok, directive) => {
  if (/^#\s*skip/i.test(directive)) skipped++;
  else if (ok) passed++;
  else failed++;
};
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  buffer += chunk.toString();
  let nl;
  while ((nl = buffer.indexOf('\n')) >= 0) {
    const line = buffer.slice(0, nl);
    buffer = buffer.slice(nl + 1);
    const m = /^( *)(not ok|ok) \d+(?: - [^#]*)?(#.*)?$/.exec(line);
    if (!m) continue;
    const depth = m[1].length / 4;
    if (depth === 1) {
      fileHadScenarios = true;
      count(m[2] === 'ok', (m[3] ?? '').trim());
    } else if (depth === 0) {
      if (!fileHadScenarios) count(m[2] === 'ok', (m[3] ?? '').trim());
      fileHadScenarios = false;
    }
  }
});
child.on('close', (code) => {
  if (code !== 0 && failed === 0) failed = 1; // tap failed for a reason no line showed
  console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(code ?? 1);
});
