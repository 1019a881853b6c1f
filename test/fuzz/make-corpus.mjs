#!/usr/bin/env node
// Writes the seed corpora of the libFuzzer targets (test/fuzz/fuzz_*.c):
//   wire:   every frame of test/golden/wire-vectors.txt (accepted and rejected,
//           with their canonical re-encodings);
//   keyref: the key-reference DER (first byte 0x00) and PEM (first byte 0x01)
//           of every URI the vectors carry, plus a few hand-made edge cases;
//   uri:    those URIs and their near misses.
// Regression inputs kept under test/fuzz/regressions/<target>/ are copied in
// too, so every crash ever found is replayed first.
//
//   node test/fuzz/make-corpus.mjs [OUTDIR]     (default build/fuzz/corpus)
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const out = path.resolve(process.argv[2] ?? path.join(root, 'build', 'fuzz', 'corpus'));

const corpora = { wire: [], keyref: [], uri: [] };

// ---- wire: the golden vectors ----
const text = fs.readFileSync(path.join(root, 'test', 'golden', 'wire-vectors.txt'), 'utf8');
for (const line of text.split('\n')) {
  const m = /^(hex|canonical) (.*)$/.exec(line);
  if (m) corpora.wire.push(Buffer.from(m[2].replace(/ /g, ''), 'hex'));
}
if (corpora.wire.length === 0) throw new Error('no frames in wire-vectors.txt');

// ---- URIs: those in the vectors and the documented forms ----
const uris = new Set([
  'kms:local/web',
  'kms:hsm/id=01;label=web',
  'kms:aws/alias/prod-tls',
  'kms:aws/arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  'kms:a/b',
  `kms:r/${'k'.repeat(4090)}`,
]);
for (const m of text.matchAll(/URI="([^"\\]*)"/g)) uris.add(m[1]);

// the key-reference DER, written from docs/wire-format.md (not by the C code under test)
const derLen = (n) => (n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]));
function keyRefDer(uri) {
  const u = Buffer.from(uri, 'utf8');
  const inner = Buffer.concat([Buffer.from([0x02, 0x01, 0x00, 0x0c]), derLen(u.length), u]);
  return Buffer.concat([Buffer.from([0x30]), derLen(inner.length), inner]);
}
const pem = (der) =>
  `kmsbridge key reference\n-----BEGIN KMSBRIDGE KEY URI-----\n${der.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END KMSBRIDGE KEY URI-----\n`;
for (const uri of uris) {
  corpora.uri.push(Buffer.from(uri));
  const der = keyRefDer(uri);
  corpora.keyref.push(Buffer.concat([Buffer.from([0]), der]), Buffer.concat([Buffer.from([1]), Buffer.from(pem(der))]));
}
for (const near of ['kms:', 'kms:/x', 'kms:r/', 'kms:r', 'KMS:r/k', 'kms:r/k\x01', 'kms:r/k\x7f', `kms:r/${'k'.repeat(4092)}`])
  corpora.uri.push(Buffer.from(near));
corpora.keyref.push(
  Buffer.from([0, 0x30, 0x81, 0x05, 0x02, 0x01, 0x00, 0x0c, 0x00]), // non-minimal length
  Buffer.concat([Buffer.from([1]), Buffer.from('-----BEGIN KMSBRIDGE KEY URI-----\n====\n-----END KMSBRIDGE KEY URI-----\n')]),
);

// ---- regression inputs ----
for (const target of Object.keys(corpora)) {
  const dir = path.join(here, 'regressions', target);
  if (!fs.existsSync(dir)) continue;
  for (const f of fs.readdirSync(dir)) corpora[target].push(fs.readFileSync(path.join(dir, f)));
}

for (const [target, inputs] of Object.entries(corpora)) {
  const dir = path.join(out, target);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const b of inputs) fs.writeFileSync(path.join(dir, crypto.createHash('sha1').update(b).digest('hex')), b);
  console.log(`${target}: ${fs.readdirSync(dir).length} seeds in ${dir}`);
}
