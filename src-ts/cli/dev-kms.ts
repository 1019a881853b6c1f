/**
 * `kmsbridge dev-kms`: runs the AWS KMS test double (src-ts/dev-kms/) on
 * loopback so the AWS backend can be tried without an AWS account. It is NOT
 * AWS and not a place for real keys: keys live in memory (or in a plain
 * state file when asked), and anyone on this host can reach the control
 * endpoint.
 */
import fs from 'node:fs';
import { Command, Option } from 'commander';
import { FAULT_KINDS, startDevKms, type Fault, type TestCredentials } from '../dev-kms/server.js';

/** Well-known, documented test credentials; they open nothing but the test double. */
export const DEV_KMS_CREDENTIALS: TestCredentials = { accessKeyId: 'AKIDKMSBRIDGEDEVKMS0', secretAccessKey: 'kmsbridge-dev-kms-test-secret-not-for-aws' };

interface DevKmsCliOptions {
  host: string;
  port: number;
  region: string;
  credentialsFromEnv?: boolean;
  state?: string;
  tlsCert?: string;
  tlsKey?: string;
  fault: Fault[];
  quiet?: boolean;
}

function parseFault(value: string, previous: Fault[]): Fault[] {
  const [operation, kind, times] = value.split(':');
  if (!operation || !kind || !(FAULT_KINDS as readonly string[]).includes(kind)) {
    throw new Error(`--fault ${value}: expected <Operation|*>:<${FAULT_KINDS.join('|')}>[:times]`);
  }
  const n = times === undefined ? 1 : Number(times);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--fault ${value}: times must be a whole number (0 = always)`);
  return [...previous, { operation, kind: kind as Fault['kind'], times: n }];
}

export function devKmsCommand(): Command {
  return new Command('dev-kms')
    .description('run a local AWS KMS TEST DOUBLE (not AWS) for trying the aws backend without an AWS account')
    .option('--host <host>', 'loopback address to listen on (127.0.0.1, ::1 or localhost)', '127.0.0.1')
    .addOption(new Option('--port <port>', 'port (0 picks a free one)').default(4599).argParser((v) => Number.parseInt(v, 10)))
    .option('--region <region>', 'the region the test double pretends to be', 'us-east-1')
    .option('--credentials-from-env', 'accept the test credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY instead of the built-in ones')
    .option('--state <file>', 'keep keys in this file between runs (plain, unencrypted: test keys only)')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate (with --tls-key)')
    .option('--tls-key <file>', 'PEM private key for --tls-cert')
    .option('--fault <op:kind[:times]>', `inject a fault (${FAULT_KINDS.join(', ')}); repeatable`, parseFault, [] as Fault[])
    .option('-q, --quiet', 'do not log each request')
    .action(async (o: DevKmsCliOptions) => {
      let credentials: TestCredentials = DEV_KMS_CREDENTIALS;
      if (o.credentialsFromEnv) {
        const id = process.env.AWS_ACCESS_KEY_ID;
        const secret = process.env.AWS_SECRET_ACCESS_KEY;
        if (!id || !secret) throw new Error('--credentials-from-env needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set');
        credentials = { accessKeyId: id, secretAccessKey: secret, ...(process.env.AWS_SESSION_TOKEN ? { sessionToken: process.env.AWS_SESSION_TOKEN } : {}) };
      }
      if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) throw new Error('--tls-cert and --tls-key go together');
      const server = await startDevKms({
        host: o.host,
        port: o.port,
        region: o.region,
        credentials: [credentials],
        ...(o.tlsCert && o.tlsKey ? { tls: { cert: fs.readFileSync(o.tlsCert), key: fs.readFileSync(o.tlsKey) } } : {}),
        ...(o.state ? { stateFile: o.state } : {}),
        ...(o.quiet ? {} : { log: (line: string) => process.stderr.write(`dev-kms: ${line}\n`) }),
      });
      for (const f of o.fault) server.addFault(f);
      const creds = o.credentialsFromEnv
        ? ['# accepting the credentials already in this shell (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)']
        : [`export AWS_ACCESS_KEY_ID=${credentials.accessKeyId}`, `export AWS_SECRET_ACCESS_KEY=${credentials.secretAccessKey}`];
      process.stdout.write(
        [
          `kmsbridge dev-kms: an AWS KMS TEST DOUBLE listening on ${server.url}`,
          'It is not AWS. Its keys are test keys, kept in memory' + (o.state ? ` and in ${o.state} (unencrypted)` : '') + '.',
          '',
          '# in the shell that runs kmsbridge:',
          ...creds,
          '',
          '# in the kmsbridge config:',
          '[keyrings.aws]',
          'type = "aws"',
          `region = "${server.region}"`,
          `endpoint = "${server.url}"`,
          '',
          `# faults and call counters: curl ${server.url}/_dev-kms/stats ; curl -d '{"operation":"Sign","kind":"throttle","times":2}' ${server.url}/_dev-kms/faults`,
          'Ctrl-C stops it.',
          '',
        ].join('\n'),
      );
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await server.close();
    });
}
