import fs from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
import { loadConfig } from '../config.js';
import { ErrorCode, KmsError } from '../errors.js';
import { keyRefPem } from '../keyref.js';
import { PACKAGE_ROOT } from '../native.js';
import type { GlobalOptions } from './main.js';

/** Where kmsbridge.so is: the directory for `-provider-path`. */
export function modulesDir(): string {
  return path.join(PACKAGE_ROOT, 'build', 'ossl-modules');
}

export function providerModule(): string {
  const so = path.join(modulesDir(), 'kmsbridge.so');
  if (!fs.existsSync(so)) {
    throw new KmsError(ErrorCode.NOT_FOUND, `the provider ${so} is not built; run 'npm rebuild kmsbridge' (needs make, gcc and libssl-dev)`);
  }
  return so;
}

function writeOut(text: string, out: string | undefined, mode: number): void {
  if (!out) {
    process.stdout.write(text);
    return;
  }
  // Written beside the target and renamed: a reader never sees half a file.
  const tmp = `${out}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode });
  fs.renameSync(tmp, out);
  if (process.stderr.isTTY) process.stderr.write(`wrote ${out}\n`);
}

export function renderConf(template: 'openssl' | 'node' | 'engine', socket: string, timeoutMs: number, rand = false): string {
  const file = path.join(PACKAGE_ROOT, 'openssl-conf', `${template}.cnf.in`);
  const values: Record<string, string> = {
    MODULE: providerModule(),
    SOCKET: socket,
    TIMEOUT_MS: String(timeoutMs),
    ENABLE_RAND: rand ? '1' : '0',
    RANDOM_REF: rand ? 'random = kmsbridge_random' : '',
    // Every random byte of every application using this file then comes from the key manager, through the agent.
    RANDOM_SECTION: rand ? '\n[kmsbridge_random]\nrandom = KMSBRIDGE\nrandom_properties = provider=kmsbridge\n' : '',
  };
  return fs.readFileSync(file, 'utf8').replace(/@([A-Z_]+)@/g, (m, k: string) => values[k] ?? m);
}

export function confCommands(): Command[] {
  const conf = new Command('conf')
    .description('write an openssl.cnf that loads the kmsbridge provider (for OPENSSL_CONF)')
    .option('--node', 'for Node.js (the nodejs_conf section) instead of OpenSSL applications')
    .addOption(new Option('--engine', 'load the legacy ENGINE kmsbridge instead (an [engine_section], for -engine kmsbridge)').conflicts('node'))
    .addOption(new Option('--rand', 'draw every random byte from the key manager (audited; for chroots without /dev/urandom)').conflicts(['node', 'engine']))
    .option('-o, --out <file>', 'write to a file instead of stdout')
    .addOption(new Option('--request-timeout <ms>', 'per-request timeout of the provider or engine').default(30_000).argParser(Number))
    .action((o: { node?: boolean; engine?: boolean; rand?: boolean; out?: string; requestTimeout: number }, cmd: Command) => {
      const g = cmd.optsWithGlobals<GlobalOptions>();
      const socket = path.resolve(g.socket ?? loadConfig(g.config).agent.socket);
      writeOut(renderConf(o.engine ? 'engine' : o.node ? 'node' : 'openssl', socket, o.requestTimeout, Boolean(o.rand)), o.out, 0o644);
    });

  const keyref = new Command('keyref')
    .description('write the key-reference PEM of a key, for tools that only take a key file (nginx, curl, Node key:)')
    .argument('<uri>', 'kms:<keyring>/<key-id>')
    .option('-o, --out <file>', 'write to a file instead of stdout')
    .action((uri: string, o: { out?: string }) => writeOut(keyRefPem(uri), o.out, 0o644));

  const dir = new Command('modules-dir').description('print the directory to pass to openssl -provider-path').action(() => {
    providerModule();
    process.stdout.write(modulesDir() + '\n');
  });
  return [conf, keyref, dir];
}
