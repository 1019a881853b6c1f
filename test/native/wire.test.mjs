// Runs the C codec and key-reference tests (TAP programs built by
// `make -C src-native tests`) against the golden vectors shared with the
// TypeScript codec.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = path.join(root, 'build', 'native-tests');
const vectors = path.join(root, 'test', 'golden', 'wire-vectors.txt');

for (const [name, args] of [
  ['wire_vectors', [vectors]],
  ['keyref_test', []],
]) {
  const exe = path.join(bin, name);
  if (!fs.existsSync(exe)) {
    t.test(name, { skip: `${exe} is not built (make -C src-native tests)` });
    continue;
  }
  if (name === 'wire_vectors' && !fs.existsSync(vectors)) {
    t.test(name, { skip: `${vectors} does not exist yet` });
    continue;
  }
  t.spawn(exe, args, { cwd: root }, `C ${name}`);
}
