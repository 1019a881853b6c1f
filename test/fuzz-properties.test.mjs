// Property tests (fast-check) for the TypeScript parsers that face untrusted
// input: the key URI parser and the wire decoder's stream reader. They add to
// the properties in wire-codec.test.mjs (valid frames round-trip; arbitrary
// bytes decode or raise ProtocolError). The C parsers are fuzzed by libFuzzer
// (test/fuzz/, fuzz.test.mjs).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { ROOT } from './lib/env.mjs';
import { decodeFrame, dumpFrame, encodeFrame, FrameReader } from '../dist/wire/codec.js';
import { parseKeyUri, formatKeyUri } from '../dist/uri.js';
import { keyRefDer } from '../dist/keyref.js';

const RUNS = Number(process.env.KMSBRIDGE_PROPERTY_RUNS ?? 3000);

// The URI rule, restated here from README/DESIGN: kms:<keyring>/<key-id>, the
// keyring a config name (letter or digit, then letters, digits, '_', '.', '-',
// at most 64), the key-id non-empty and verbatim, no control characters, at
// most 2048 characters in all.
const keyringName = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/);
const keyId = fc.string({ minLength: 1, maxLength: 200, unit: 'binary' }).filter((s) => !/[\u0000-\u001f\u007f]/.test(s));

t.test('property: every well-formed URI parses to its keyring and its key-id, verbatim', async () => {
  fc.assert(
    fc.property(keyringName, keyId, (ring, id) => {
      const uri = formatKeyUri(ring, id);
      const k = parseKeyUri(uri);
      return k.uri === uri && k.keyring === ring && k.keyId === id;
    }),
    { numRuns: RUNS },
  );
});

t.test('property: any string either parses consistently or is a BAD_REQUEST naming the expected form', async () => {
  const anyUri = fc.oneof(
    fc.string({ maxLength: 80, unit: 'binary' }),
    fc.string({ maxLength: 80, unit: 'binary' }).map((s) => `kms:${s}`),
    fc.tuple(fc.string({ maxLength: 20 }), fc.string({ maxLength: 20, unit: 'binary' })).map(([a, b]) => `kms:${a}/${b}`),
    fc.integer({ min: 2040, max: 2060 }).map((n) => `kms:r/${'x'.repeat(n - 6)}`),
  );
  fc.assert(
    fc.property(anyUri, (s) => {
      let k;
      try {
        k = parseKeyUri(s);
      } catch (err) {
        if (err.name !== 'KmsError' || err.code !== 6) throw err;
        if (!/expected kms:<keyring>\/<key-id>/.test(err.message)) throw new Error(`unhelpful message: ${err.message}`);
        return true;
      }
      // accepted: it must satisfy the rule restated above, and rebuild to itself
      const ok =
        s.length <= 2048 && !/[\u0000-\u001f\u007f]/.test(s) && /^kms:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\/./su.test(s) && formatKeyUri(k.keyring, k.keyId) === s;
      if (!ok) throw new Error(`accepted a URI outside the rule: ${JSON.stringify(s)}`);
      return true;
    }),
    { numRuns: RUNS },
  );
});

t.test('property: the key-reference DER of any valid URI is SEQUENCE { 0, UTF8String uri } as Node reads it', async () => {
  fc.assert(
    fc.property(keyringName, keyId, (ring, id) => {
      const uri = formatKeyUri(ring, id);
      const der = keyRefDer(uri);
      // an independent reader: Node's X509/ASN.1 parser has no generic API, so walk the TLVs by hand
      const readLen = (off) => {
        const b = der[off];
        if (b < 0x80) return [b, off + 1];
        const n = b & 0x7f;
        let v = 0;
        for (let i = 0; i < n; i++) v = v * 256 + der[off + 1 + i];
        if (v < 0x80 || (n > 1 && der[off + 1] === 0)) throw new Error('non-minimal DER length');
        return [v, off + 1 + n];
      };
      if (der[0] !== 0x30) return false;
      const [seqLen, seqOff] = readLen(1);
      if (seqOff + seqLen !== der.length) return false;
      if (der.subarray(seqOff, seqOff + 3).toString('hex') !== '020100' || der[seqOff + 3] !== 0x0c) return false;
      const [uLen, uOff] = readLen(seqOff + 4);
      return uOff + uLen === der.length && der.subarray(uOff).toString('utf8') === uri;
    }),
    { numRuns: RUNS },
  );
});

function goldenFrames() {
  const text = fs.readFileSync(path.join(ROOT, 'test', 'golden', 'wire-vectors.txt'), 'utf8');
  return [...text.matchAll(/^hex (.*)$/gm)].map((m) => Buffer.from(m[1].replace(/ /g, ''), 'hex'));
}

t.test('property: mutated golden frames decode or raise ProtocolError; what decodes re-encodes stably', async () => {
  const frames = goldenFrames();
  const mutation = fc.record({
    frame: fc.constantFrom(...frames),
    edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('set', 'insert', 'delete')), { maxLength: 6 }),
    fixLength: fc.boolean(),
  });
  fc.assert(
    fc.property(mutation, ({ frame, edits, fixLength }) => {
      let b = Buffer.from(frame);
      for (const [pos, byte, op] of edits) {
        const i = b.length ? pos % b.length : 0;
        if (op === 'set' && b.length) b[i] = byte;
        else if (op === 'insert') b = Buffer.concat([b.subarray(0, i), Buffer.from([byte]), b.subarray(i)]);
        else if (op === 'delete') b = Buffer.concat([b.subarray(0, i), b.subarray(i + 1)]);
      }
      if (fixLength && b.length >= 4) b.writeUInt32BE(b.length - 4, 0);
      let f;
      try {
        f = decodeFrame(b);
      } catch (err) {
        if (err.name !== 'ProtocolError') throw err;
        return true;
      }
      const again = decodeFrame(encodeFrame(f));
      return dumpFrame(again) === dumpFrame(f) && encodeFrame(again).equals(encodeFrame(f));
    }),
    { numRuns: RUNS },
  );
});

t.test('property: the stream reader gives the same frames however the bytes are split, and never throws anything but ProtocolError', async () => {
  const frames = goldenFrames().filter((b) => {
    try {
      decodeFrame(b);
      return true;
    } catch {
      return false;
    }
  });
  const stream = fc.record({
    picks: fc.array(fc.constantFrom(...frames), { minLength: 1, maxLength: 8 }),
    cuts: fc.array(fc.nat(), { maxLength: 12 }),
    junk: fc.option(fc.uint8Array({ minLength: 1, maxLength: 40 })),
  });
  fc.assert(
    fc.property(stream, ({ picks, cuts, junk }) => {
      const all = Buffer.concat([...picks, ...(junk ? [Buffer.from(junk)] : [])]);
      const points = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
      const reader = new FrameReader();
      const got = [];
      let prev = 0;
      try {
        for (const p of [...points, all.length]) {
          got.push(...reader.push(all.subarray(prev, p)));
          prev = p;
        }
      } catch (err) {
        if (err.name !== 'ProtocolError') throw err;
        if (!junk) throw err; // only the junk tail may be refused
        // the connection is dropped then: the frames handed out so far must be
        // a prefix of what was sent (frames in the refused chunk may be lost)
        const want = picks.slice(0, got.length).map((p) => dumpFrame(decodeFrame(p)));
        return got.map(dumpFrame).join('\n') === want.join('\n');
      }
      const want = picks.map((p) => dumpFrame(decodeFrame(p)));
      return got.slice(0, picks.length).map(dumpFrame).join('\n') === want.join('\n');
    }),
    { numRuns: RUNS },
  );
});
