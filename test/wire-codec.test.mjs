import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { ROOT } from './lib/env.mjs';
import { decodeFrame, dumpFrame, encodeFrame, FrameReader, MAX_FRAME, Tag } from '../dist/wire/codec.js';

function readVectors() {
  const text = fs.readFileSync(path.join(ROOT, 'test', 'golden', 'wire-vectors.txt'), 'utf8');
  const vectors = [];
  let cur;
  for (const line of text.split('\n')) {
    const m = /^(name|hex|dump|error|canonical) (.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === 'name') vectors.push((cur = { name: m[2] }));
    else cur[m[1]] = m[1] === 'hex' || m[1] === 'canonical' ? Buffer.from(m[2].replace(/ /g, ''), 'hex') : m[2];
  }
  return vectors;
}

const vectors = readVectors();

t.test('the TypeScript codec decodes every golden vector to its dump and re-encodes it byte for byte', async (t) => {
  t.ok(vectors.length >= 30, `${vectors.length} vectors`);
  for (const v of vectors.filter((v) => v.dump)) {
    const frame = decodeFrame(v.hex);
    t.equal(dumpFrame(frame), v.dump, `${v.name}: dump`);
    t.same(encodeFrame(frame), v.canonical ?? v.hex, `${v.name}: re-encoding`);
  }
});

t.test('the TypeScript codec rejects every malformed golden vector', async (t) => {
  const bad = vectors.filter((v) => v.error);
  t.ok(bad.length >= 10);
  for (const v of bad) t.throws(() => decodeFrame(v.hex), { name: 'ProtocolError' }, `${v.name}: ${v.error}`);
});

t.test('the stream reader reassembles frames split at every byte and rejects an oversized prefix at once', async (t) => {
  const frames = vectors.filter((v) => v.dump).map((v) => v.hex);
  const stream = Buffer.concat(frames);
  for (const step of [1, 3, 7, 64]) {
    const reader = new FrameReader();
    const got = [];
    for (let i = 0; i < stream.length; i += step) got.push(...reader.push(stream.subarray(i, i + step)));
    t.equal(got.length, frames.length, `chunks of ${step}`);
    t.equal(reader.buffered, 0);
  }
  const huge = Buffer.alloc(4);
  huge.writeUInt32BE(MAX_FRAME + 1);
  t.throws(() => new FrameReader().push(huge), /exceeds/);
});

t.test('property: any frame of valid fields survives encode → decode unchanged', async () => {
  const str = fc.string({ maxLength: 64 }).filter((s) => !s.includes('\0'));
  const field = fc.oneof(
    fc.record({ tag: fc.constantFrom(Tag.URI, Tag.ALGORITHM, Tag.DIGEST, Tag.MESSAGE), value: str }),
    fc.record({ tag: fc.constantFrom(Tag.BITS, Tag.SALT_LENGTH, Tag.LENGTH), value: fc.integer({ min: 0, max: 0xffffffff }) }),
    fc.record({ tag: fc.constantFrom(Tag.DATA, Tag.LABEL, Tag.RESULT), value: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)) }),
  );
  const frame = fc.record({
    id: fc.integer({ min: 0, max: 0xffffffff }),
    type: fc.integer({ min: 0, max: 0xffff }),
    status: fc.integer({ min: 0, max: 0xffff }),
    fields: fc.uniqueArray(field, { selector: (f) => f.tag, maxLength: 8 }),
  });
  fc.assert(
    fc.property(frame, (f) => {
      const back = decodeFrame(encodeFrame(f));
      return dumpFrame(back) === dumpFrame(f) && encodeFrame(back).equals(encodeFrame(f));
    }),
    { numRuns: 2000 },
  );
});

t.test('property: arbitrary bytes never crash the decoder, they decode or raise ProtocolError', async () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), (bytes) => {
      const buf = Buffer.from(bytes);
      if (buf.length >= 4) buf.writeUInt32BE(buf.length - 4, 0);
      try {
        decodeFrame(buf);
      } catch (err) {
        if (err.name !== 'ProtocolError') throw err;
      }
      return true;
    }),
    { numRuns: 5000 },
  );
});
