/**
 * `kmsbridge demo`: the main job on the embedded default, step by step, on a
 * throw-away store and agent: keys are created in the agent, signatures come
 * back through the socket, and the system openssl verifies them with the
 * exported public keys. Everything is removed at the end.
 */
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { AgentClient } from '../agent/client.js';
import { isLive } from '../agent/socket-path.js';
import { ErrorCode, KmsError } from '../errors.js';
import { exportPublicKey } from '../public-key.js';
import { MsgType, Tag } from '../wire/codec.js';
import { fieldsToDescribe } from '../wire/fields.js';

function step(n: number, text: string): void {
  process.stdout.write(`\n[${n}] ${text}\n`);
}

function openssl(args: string[], cwd: string): string {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw new KmsError(ErrorCode.INTERNAL, `cannot run openssl (${r.error.message}); install it: apt-get install openssl`);
  if (r.status !== 0) throw new KmsError(ErrorCode.INTERNAL, `openssl ${args[0]} failed: ${(r.stderr || r.stdout).trim()}`);
  process.stdout.write(`    $ openssl ${args.join(' ')}\n      ${(r.stdout + r.stderr).trim().replace(/\n/g, '\n      ')}\n`);
  return r.stdout;
}

async function waitForSocket(socket: string, child: ReturnType<typeof spawn>, log: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new KmsError(ErrorCode.INTERNAL, `the demo agent exited: ${log().trim()}`);
    if (fs.existsSync(socket) && (await isLive(socket))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new KmsError(ErrorCode.TIMEOUT, `the demo agent did not listen on ${socket} within 15 s: ${log().trim()}`);
}

export async function runDemo(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsbridge-demo-'));
  const socket = path.join(work, 'run', 'agent.sock');
  const configFile = path.join(work, 'config.toml');
  fs.writeFileSync(configFile, `[agent]\naudit_log = "${path.join(work, 'audit.log')}"\n\n[keyrings.local]\ntype = "local"\npath = "${path.join(work, 'keys')}"\n`);
  let agentLog = '';
  const agent = spawn(process.execPath, [process.argv[1]!, 'agent', '--foreground', '--config', configFile, '--socket', socket], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  agent.stderr!.on('data', (d: Buffer) => (agentLog += d.toString()));
  let client: AgentClient | undefined;
  try {
    step(1, `starting an agent on a temporary local key store (${work})`);
    await waitForSocket(socket, agent, () => agentLog);
    client = await AgentClient.connect(socket, { timeoutMs: 60_000, peerName: 'kmsbridge-demo' });
    process.stdout.write(`    agent pid ${agent.pid} listening on ${socket}\n`);

    const message = Buffer.from('kmsbridge demo: this message is signed by a key that never leaves the key manager\n');
    fs.writeFileSync(path.join(work, 'message.txt'), message);
    const digest = crypto.createHash('sha256').update(message).digest();
    const cases = [
      { name: 'web-ec', spec: 'ec-p256', sign: [{ tag: Tag.ALGORITHM, value: 'ecdsa' }] },
      { name: 'web-rsa', spec: 'rsa-2048', sign: [{ tag: Tag.ALGORITHM, value: 'rsa-pss' }, { tag: Tag.SALT_LENGTH, value: 32 }] },
    ] as const;
    let n = 2;
    for (const c of cases) {
      step(n++, `creating ${c.spec} key '${c.name}' in keyring 'local'`);
      const d = fieldsToDescribe(
        await client.request(MsgType.CREATE, [
          { tag: Tag.KEYRING, value: 'local' },
          { tag: Tag.NAME, value: c.name },
          { tag: Tag.KEY_SPEC, value: c.spec },
        ]),
      );
      const pub = path.join(work, `${c.name}.pub.pem`);
      fs.writeFileSync(pub, exportPublicKey(d, 'pem'));
      process.stdout.write(`    ${d.uri}: ${d.keyType} ${d.curve ?? d.bits + ' bits'}; public key exported to ${path.basename(pub)}\n`);

      step(n++, `signing message.txt with ${d.uri} through the agent (SHA-256 computed here, only the digest is sent)`);
      const sig = (
        await client.request(MsgType.SIGN, [
          { tag: Tag.URI, value: d.uri },
          ...c.sign,
          { tag: Tag.DIGEST, value: 'sha256' },
          { tag: Tag.DATA, value: digest },
        ])
      ).requireBytes(Tag.RESULT);
      fs.writeFileSync(path.join(work, `${c.name}.sig`), sig);
      process.stdout.write(`    ${sig.length}-byte signature received\n`);

      step(n++, 'verifying the signature with the system openssl and the exported public key');
      const pss = c.spec.startsWith('rsa') ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : [];
      openssl(['dgst', '-sha256', '-verify', path.basename(pub), ...pss, '-signature', `${c.name}.sig`, 'message.txt'], work);
    }
    step(n++, 'the audit log records every private-key operation');
    await new Promise((r) => setTimeout(r, 50));
    for (const line of fs.readFileSync(path.join(work, 'audit.log'), 'utf8').trim().split('\n')) process.stdout.write(`    ${line}\n`);
    process.stdout.write('\ndemo complete: every signature was verified by openssl; no private key left the agent\n');
  } finally {
    client?.close();
    agent.kill('SIGTERM');
    await new Promise((r) => (agent.exitCode !== null ? r(null) : agent.once('exit', r)));
    fs.rmSync(work, { recursive: true, force: true });
  }
}

export function demoCommand(): Command {
  return new Command('demo').description('run the main job end to end on a temporary local key store, then clean up').action(runDemo);
}
