import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { Agent } from '../agent/server.js';
import { isLive } from '../agent/socket-path.js';
import { openAuditSink } from '../audit.js';
import { loadConfig } from '../config.js';
import { ErrorCode, KmsError } from '../errors.js';
import { KeyService } from '../keyservice.js';
import { native } from '../native.js';
import type { GlobalOptions } from './main.js';

async function runForeground(g: GlobalOptions): Promise<void> {
  const config = loadConfig(g.config);
  const socketPath = g.socket ?? config.agent.socket;
  const log = (m: string) => process.stderr.write(`kmsbridge agent[${process.pid}]: ${m}\n`);
  const audit = openAuditSink(config.agent.auditLog);
  const keyService = new KeyService(config);
  // Refuse to start on unsafe store permissions or a bad config: open every keyring now, not at the first request.
  // A store that cannot be opened (wrong or missing passphrase, damaged store file) does not stop the other
  // keyrings: the agent starts and says why here, and each request for that keyring fails with the same message,
  // which the provider hands to the application (`openssl` then names the passphrase, not a missing agent).
  // Every keyring is opened now, so settings errors and warnings (a PIN in the config) show at start.
  const unusable = [ErrorCode.KEY_UNUSABLE, ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.NOT_FOUND];
  for (const name of keyService.keyringNames()) {
    try {
      log(`keyring '${name}': ${await keyService.protectionSummary(name)}`);
    } catch (err) {
      if (!(err instanceof KmsError && unusable.includes(err.code))) throw err;
      log(`keyring '${name}' is unusable until this is fixed: ${err.message}`);
    }
  }
  // Signatures answered from grants write their audit line to the same file (stderr: descriptor 2, written synchronously).
  const agent = await Agent.start({ socketPath, keyService, audit: audit.sink, auditFd: audit.fd ?? 2, log });
  log(`config: ${config.source ?? 'built-in default'}; keyrings: ${keyService.keyringNames().join(', ')}`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log(`${sig}: stopping`);
      void agent.stop().then(() => {
        // Node's exit would wait forever for a serving thread stuck in a hung token's library (the token thread: main.ts).
        if (agent.stuck) {
          log('exiting without waiting for a PKCS#11 library that has not returned');
          native().exitStuck(0);
        }
        audit.close();
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

/** Starts the agent in the background and returns once its socket answers. */
async function runDetached(g: GlobalOptions): Promise<void> {
  const config = loadConfig(g.config);
  const socketPath = g.socket ?? config.agent.socket;
  if (await isLive(socketPath)) throw new KmsError(ErrorCode.ALREADY_EXISTS, `an agent is already listening on ${socketPath}`);
  const logFile = path.join(path.dirname(socketPath), 'agent.log');
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  const out = fs.openSync(logFile, 'a', 0o600);
  const args = [process.argv[1]!, 'agent', '--foreground', ...(g.config ? ['--config', g.config] : []), ...(g.socket ? ['--socket', g.socket] : [])];
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', out, out] });
  child.unref();
  const deadline = Date.now() + 15_000;
  let exited: number | null = null;
  child.once('exit', (code) => (exited = code ?? 1));
  while (Date.now() < deadline) {
    if (exited !== null) {
      const tail = fs.readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-1)[0];
      throw new KmsError(ErrorCode.INTERNAL, `the agent exited at start: ${tail ?? '(no output)'} (log: ${logFile})`);
    }
    if (fs.existsSync(socketPath) && (await isLive(socketPath))) {
      process.stdout.write(`kmsbridge agent started: pid ${child.pid}, socket ${socketPath}, log ${logFile}\n`);
      process.stdout.write(`export KMSBRIDGE_AGENT_SOCK=${socketPath}\n`);
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new KmsError(ErrorCode.TIMEOUT, `the agent did not start listening on ${socketPath} within 15 s (log: ${logFile})`);
}

export function agentCommand(): Command {
  return new Command('agent')
    .description('serve the KeyService on a Unix socket to the provider, the ENGINE and the CLI')
    .option('-f, --foreground', 'stay in the foreground and log to stderr')
    .action(async (o: { foreground?: boolean }, cmd: Command) => {
      const g = cmd.optsWithGlobals<GlobalOptions>();
      if (o.foreground) await runForeground(g);
      else await runDetached(g);
    });
}
