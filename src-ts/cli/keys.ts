import fs from 'node:fs';
import readline from 'node:readline/promises';
import { Command, Option } from 'commander';
import { KEY_SPECS } from '../types.js';
import { EXPORT_FORMATS, exportPublicKey, type ExportFormat } from '../public-key.js';
import { openKeyOps, type KeyOps } from './key-ops.js';
import { progressOnTerminal } from './output.js';
import { KeyService } from '../keyservice.js';
import { parseKeyUri } from '../uri.js';
import type { GlobalOptions } from './main.js';

async function withOps<T>(cmd: Command, fn: (ops: KeyOps) => Promise<T>): Promise<T> {
  const g = cmd.optsWithGlobals<GlobalOptions>();
  const { ops } = await openKeyOps({ ...(g.config ? { config: g.config } : {}), ...(g.socket ? { socket: g.socket } : {}), timeoutMs: g.timeout });
  try {
    return await fn(ops);
  } finally {
    await ops.close();
  }
}

function keyLine(k: { uri: string; keyType: string; bits: number; curve?: string }): string {
  const kind = k.keyType === 'rsa' ? `rsa-${k.bits}` : k.keyType === 'ec' ? `ec ${k.curve}` : k.keyType;
  return `${k.uri}\t${kind}`;
}

export function keysCommand(): Command {
  const keys = new Command('keys').description('create, list, show, export and delete keys');

  keys
    .command('create <name>')
    .description('create a key in a keyring and print its URI')
    .requiredOption('--keyring <keyring>', 'keyring to create the key in')
    .addOption(new Option('--type <type>', 'key type').choices([...KEY_SPECS]).makeOptionMandatory())
    .action(async (name: string, o: { keyring: string; type: string }, cmd: Command) => {
      const { progress, done } = progressOnTerminal();
      const d = await withOps(cmd, async (ops) => {
        try {
          return await ops.create(o.keyring, name, o.type, progress);
        } finally {
          done();
        }
      });
      if (process.stderr.isTTY) process.stderr.write(`created ${keyLine(d).replace('\t', ' (')})\n`);
      process.stdout.write(d.uri + '\n');
    });

  keys
    .command('list')
    .description('list the keys of one keyring or of all')
    .option('--keyring <keyring>', 'only this keyring')
    .action(async (o: { keyring?: string }, cmd: Command) => {
      const list = await withOps(cmd, (ops) => ops.list(o.keyring));
      for (const k of list) process.stdout.write(keyLine(k) + '\n');
      if (list.length === 0 && process.stderr.isTTY) process.stderr.write('no keys\n');
    });

  keys
    .command('show <uri>')
    .description('show a key: type, size or curve, allowed algorithms, public key')
    .action(async (uri: string, _o: unknown, cmd: Command) => {
      const d = await withOps(cmd, (ops) => ops.describe(uri));
      const g = cmd.optsWithGlobals<GlobalOptions>();
      let protection = '';
      try {
        const ks = new KeyService((await import('../config.js')).loadConfig(g.config));
        protection = await ks.protectionSummary(parseKeyUri(uri).keyring);
        await ks.close();
      } catch {
        /* shown when available */
      }
      const lines = [
        `uri:         ${d.uri}`,
        `type:        ${d.keyType}${d.curve ? ' ' + d.curve : ''}`,
        `bits:        ${d.bits}`,
        `algorithms:  ${d.algorithms.join(', ')}`,
        `digests:     ${d.digests.join(', ') || '(whole message)'}`,
        ...(d.mandatoryDigest ? [`mandatory digest: ${d.mandatoryDigest}`] : []),
        ...(protection ? [`protection:  ${protection}`] : []),
        exportPublicKey(d, 'pem').toString().trimEnd(),
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });

  keys
    .command('export <uri>')
    .description('export the public key (the private key never leaves the key manager)')
    .addOption(new Option('--format <format>', 'output format').choices(EXPORT_FORMATS).default('pem'))
    .option('-o, --out <file>', 'write to a file instead of stdout')
    .action(async (uri: string, o: { format: ExportFormat; out?: string }, cmd: Command) => {
      const d = await withOps(cmd, (ops) => ops.describe(uri));
      const data = exportPublicKey(d, o.format);
      if (o.out) fs.writeFileSync(o.out, data, { mode: 0o644 });
      else process.stdout.write(data);
    });

  keys
    .command('delete <uri>')
    .description('delete a key for good')
    .option('-y, --yes', 'do not ask for confirmation on a terminal')
    .action(async (uri: string, o: { yes?: boolean }, cmd: Command) => {
      parseKeyUri(uri);
      if (!o.yes && process.stdin.isTTY && process.stderr.isTTY) {
        const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
        const answer = await rl.question(`Delete ${uri} for good? It cannot be recovered. [y/N] `);
        rl.close();
        if (!/^y(es)?$/i.test(answer.trim())) {
          process.stderr.write('not deleted\n');
          return;
        }
      }
      await withOps(cmd, (ops) => ops.delete(uri));
      if (process.stderr.isTTY) process.stderr.write(`deleted ${uri}\n`);
    });

  return keys;
}
