#!/usr/bin/env node
// Builds the native parts: kmsbridge.node (node-gyp, against Node's own
// OpenSSL headers) and, where its Makefile exists, kmsbridge.so (make,
// against the system OpenSSL). Run by `npm install` and `npm run build`.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function run(cmd, args, what) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  if (r.status !== 0) {
    console.error(`kmsbridge: ${what} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`);
    process.exit(1);
  }
}

// node-gyp: npm tells its lifecycle scripts where its own copy is; otherwise use the one beside npm.
const nodeGyp =
  process.env.npm_config_node_gyp ??
  path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
// Headers of the running node: installed beside it (Debian/NodeSource put them in <prefix>/include/node).
const prefix = path.resolve(path.dirname(process.execPath), '..');
const nodedir = process.env.npm_config_nodedir ?? (fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : undefined);
const gypArgs = nodedir ? [`--nodedir=${nodedir}`] : [];

// configure + build rather than rebuild: rebuild wipes build/, where kmsbridge.so lives too.
run(process.execPath, [nodeGyp, 'configure', ...gypArgs], 'node-gyp configure of kmsbridge.node');
run(process.execPath, [nodeGyp, 'build', ...gypArgs], 'node-gyp build of kmsbridge.node');

// The provider always; the native test programs only in a checkout that has their sources (not in the npm package).
const targets = ['provider', ...(fs.existsSync(path.join(root, 'test', 'native')) ? ['tests'] : [])];
const jobs = `-j${Math.max(1, Math.min(4, (await import('node:os')).cpus().length))}`;
run('make', ['-C', 'src-native', jobs, ...targets], 'make of kmsbridge.so');
