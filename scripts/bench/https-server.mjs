// A Node https server for the handshake measurements (3 and 5).
// argv: <route> <key> <cert> <processes>
//   route pem:    key is a PEM file
//   route keyref: key is a kms: URI, in-process KeyService (kmsbridge.load())
//   route agent:  key is a kms: URI, kmsbridge.load({ agent: KMSBRIDGE_AGENT_SOCK })
//   route engine: key is a kms: URI through privateKeyEngine 'kmsbridge'
//   route pkcs11: key is a pkcs11: URI through libp11's engine (OPENSSL_CONF names the module)
// processes 1: one process; N > 1: node:cluster with N workers, each calling
// kmsbridge.load() itself (docs/node-scaling.md). Prints {"port","pids"} once
// every process listens on 127.0.0.1; SIGTERM stops them all.
import cluster from 'node:cluster';
import fs from 'node:fs';
import https from 'node:https';

const [route, key, certFile, procArg] = process.argv.slice(2);
const processes = Number(procArg ?? 1);

async function serve() {
  const cert = fs.readFileSync(certFile);
  let options;
  let kb;
  if (route === 'pem') options = { key: fs.readFileSync(key), cert };
  else if (route === 'pkcs11') options = { privateKeyEngine: 'pkcs11', privateKeyIdentifier: key, cert };
  else {
    const kmsbridge = (await import('../../dist/index.js')).default;
    kb = await kmsbridge.load(route === 'agent' ? { agent: process.env.KMSBRIDGE_AGENT_SOCK } : {});
    options = route === 'engine' ? { privateKeyEngine: 'kmsbridge', privateKeyIdentifier: key, cert } : { key: kb.keyRef(key), cert };
  }
  const server = https.createServer(options, (req, res) => res.end('ok\n'));
  server.on('tlsClientError', () => {}); // clients close right after the handshake
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server.address().port;
}

if (processes <= 1) {
  const port = await serve();
  console.log(JSON.stringify({ port, pids: [process.pid] }));
  process.on('SIGTERM', () => process.exit(0));
} else if (cluster.isPrimary) {
  const workers = Array.from({ length: processes }, () => cluster.fork());
  const ports = await Promise.all(
    workers.map(
      (w) =>
        new Promise((resolve, reject) => {
          w.once('message', (m) => resolve(m.port));
          w.once('exit', (code) => reject(new Error(`a cluster worker exited (${code})`)));
        }),
    ),
  );
  console.log(JSON.stringify({ port: ports[0], pids: [process.pid, ...workers.map((w) => w.process.pid)] }));
  process.on('SIGTERM', () => {
    for (const w of workers) w.process.kill('SIGTERM');
    process.exit(0);
  });
} else {
  const port = await serve();
  process.send({ port });
  process.on('SIGTERM', () => process.exit(0));
}
