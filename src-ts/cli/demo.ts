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
import { keyRefPem } from '../keyref.js';
import { providerModule, renderConf } from './conf.js';

function step(n: number, text: string): void {
  process.stdout.write(`\n[${n}] ${text}\n`);
}

function openssl(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  const r = spawnSync('openssl', args, { cwd, env, encoding: 'utf8', timeout: 30_000 });
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

/**
 * The provider's part: a self-signed certificate made by `openssl req` with
 * the kms key (openssl.cnf alone loads the provider), served by `openssl
 * s_server` from a key-reference PEM, and a plain openssl client that
 * verifies the certificate during a TLS 1.3 handshake.
 */
async function tlsSteps(n: number, work: string, socket: string): Promise<number> {
  const conf = path.join(work, 'openssl.cnf');
  fs.writeFileSync(conf, renderConf('openssl', socket, 30_000));
  const env = { ...process.env, OPENSSL_CONF: conf, KMSBRIDGE_AGENT_SOCK: socket };
  step(n++, `writing an openssl.cnf that loads the kmsbridge provider (kmsbridge conf): ${path.basename(conf)}`);
  process.stdout.write(`    module ${providerModule()}\n`);

  step(n++, 'making a self-signed certificate for kms:local/web-ec with openssl req (the CSR is signed through the provider)');
  openssl(
    [
      'req',
      '-new',
      '-x509',
      '-key',
      'kms:local/web-ec',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=DNS:localhost',
      '-days',
      '1',
      '-out',
      'web-ec.crt',
    ],
    work,
    env,
  );
  openssl(['x509', '-in', 'web-ec.crt', '-noout', '-subject', '-fingerprint', '-sha256'], work);
  openssl(['verify', '-CAfile', 'web-ec.crt', 'web-ec.crt'], work);

  step(n++, 'serving TLS with openssl s_server; its -key is a key-reference PEM (kmsbridge keyref), not a private key');
  fs.writeFileSync(path.join(work, 'web-ec.ref.pem'), keyRefPem('kms:local/web-ec'));
  process.stdout.write(fs.readFileSync(path.join(work, 'web-ec.ref.pem'), 'utf8').trimEnd().replace(/^/gm, '      ') + '\n');
  const server = spawn('openssl', ['s_server', '-accept', '127.0.0.1:0', '-naccept', '1', '-cert', 'web-ec.crt', '-key', 'web-ec.ref.pem', '-www'], {
    cwd: work,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new KmsError(ErrorCode.TIMEOUT, `openssl s_server did not start within 15 s: ${out}`)), 15_000);
      const onData = (d: Buffer) => {
        out += d.toString();
        const m = /ACCEPT .*:(\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      };
      server.stdout!.on('data', onData);
      server.stderr!.on('data', onData);
      server.once('exit', () => {
        clearTimeout(timer);
        reject(new KmsError(ErrorCode.INTERNAL, `openssl s_server exited: ${out.trim()}`));
      });
    });
    process.stdout.write(`    s_server listening on 127.0.0.1:${port}\n`);

    step(n++, 'connecting with a plain openssl client (no kmsbridge) that verifies the certificate in a TLS 1.3 handshake');
    const r = spawnSync(
      'openssl',
      [
        's_client',
        '-connect',
        `127.0.0.1:${port}`,
        '-servername',
        'localhost',
        '-tls1_3',
        '-CAfile',
        'web-ec.crt',
        '-verify_return_error',
        '-verify_hostname',
        'localhost',
        '-brief',
      ],
      {
        cwd: work,
        input: 'GET / HTTP/1.0\r\n\r\n',
        encoding: 'utf8',
        timeout: 30_000,
      },
    );
    const summary = (r.stderr + r.stdout).split('\n').filter((l) => /Protocol|Ciphersuite|Peer certificate|Signature type|Verification|Hash used/.test(l));
    for (const line of summary) process.stdout.write(`      ${line.trim()}\n`);
    if (r.status !== 0 || !/Verification: OK/.test(r.stderr + r.stdout)) {
      throw new KmsError(ErrorCode.INTERNAL, `the TLS handshake did not verify: ${(r.stderr + r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
    }
  } finally {
    server.kill();
  }
  return n;
}

export async function runDemo(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsbridge-demo-'));
  const socket = path.join(work, 'run', 'agent.sock');
  const configFile = path.join(work, 'config.toml');
  fs.writeFileSync(
    configFile,
    `[agent]\naudit_log = "${path.join(work, 'audit.log')}"\n\n[keyrings.local]\ntype = "local"\npath = "${path.join(work, 'keys')}"\n`,
  );
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
      {
        name: 'web-rsa',
        spec: 'rsa-2048',
        sign: [
          { tag: Tag.ALGORITHM, value: 'rsa-pss' },
          { tag: Tag.SALT_LENGTH, value: 32 },
        ],
      },
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
        await client.request(MsgType.SIGN, [{ tag: Tag.URI, value: d.uri }, ...c.sign, { tag: Tag.DIGEST, value: 'sha256' }, { tag: Tag.DATA, value: digest }])
      ).requireBytes(Tag.RESULT);
      fs.writeFileSync(path.join(work, `${c.name}.sig`), sig);
      process.stdout.write(`    ${sig.length}-byte signature received\n`);

      step(n++, 'verifying the signature with the system openssl and the exported public key');
      const pss = c.spec.startsWith('rsa') ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : [];
      openssl(['dgst', '-sha256', '-verify', path.basename(pub), ...pss, '-signature', `${c.name}.sig`, 'message.txt'], work);
    }
    n = await tlsSteps(n, work, socket);
    step(n++, 'the audit log records every private-key operation');
    await new Promise((r) => setTimeout(r, 50));
    for (const line of fs.readFileSync(path.join(work, 'audit.log'), 'utf8').trim().split('\n')) process.stdout.write(`    ${line}\n`);
    process.stdout.write('\ndemo complete: openssl verified every signature and the certificate; no private key left the agent\n');
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
