#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';
import { tokenThreadStuck } from '../backends/pkcs11/thread-client.js';
import { KmsError } from '../errors.js';
import { native } from '../native.js';
import { agentCommand } from './agent.js';
import { keysCommand } from './keys.js';
import { demoCommand } from './demo.js';
import { doctorCommand } from './doctor.js';
import { devKmsCommand } from './dev-kms.js';
import { confCommands } from './conf.js';

export interface GlobalOptions {
  config?: string;
  socket?: string;
  timeout: number;
  debug?: boolean;
}

function program(): Command {
  const p = new Command('kmsbridge')
    .description('private keys that never leave the key manager, for OpenSSL and Node.js')
    .version('0.1.0')
    .option('-c, --config <file>', 'config file (default: KMSBRIDGE_CONFIG, ~/.config/kmsbridge/config.toml, /etc/kmsbridge/config.toml)')
    .option('-s, --socket <path>', 'agent socket (default: KMSBRIDGE_AGENT_SOCK or $XDG_RUNTIME_DIR/kmsbridge/agent.sock)')
    .addOption(new Option('--timeout <ms>', 'bound on each request to the agent').default(30_000).argParser((v) => positiveInt(v)))
    .option('--debug', 'show stack traces of errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  p.addCommand(agentCommand());
  p.addCommand(keysCommand());
  p.addCommand(demoCommand());
  p.addCommand(doctorCommand());
  p.addCommand(devKmsCommand());
  for (const c of confCommands()) p.addCommand(c);
  for (const c of p.commands) {
    c.exitOverride();
    for (const sub of c.commands) sub.exitOverride();
  }
  return p;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`'${v}' is not a positive whole number`);
  return n;
}

async function main(argv: string[]): Promise<number> {
  const p = program();
  try {
    await p.parseAsync(argv);
    return Number(process.exitCode ?? 0); // what a command set (doctor: a keyring could not be read)
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version exit 0; usage errors were already printed by commander
      return err.exitCode === 0 ? 0 : 2;
    }
    const debug = argv.includes('--debug');
    if (err instanceof KmsError) {
      process.stderr.write(`kmsbridge: ${err.message}\n`);
      if (debug) process.stderr.write(`${err.codeName}\n${err.stack}\n`);
      return 1;
    }
    const e = err as Error;
    process.stderr.write(`kmsbridge: ${e?.message ?? String(err)}\n`);
    if (debug) process.stderr.write(`${e?.stack}\n`);
    return 1;
  }
}

void main(process.argv).then((code) => {
  process.exitCode = code;
  // A token that hangs holds its library's token thread, and Node's exit would wait for that thread forever.
  if (tokenThreadStuck()) {
    process.stderr.write('kmsbridge: exiting without waiting for a PKCS#11 library that has not returned\n');
    native().exitStuck(code);
  }
});
