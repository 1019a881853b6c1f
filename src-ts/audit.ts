import fs from 'node:fs';

/** One JSON line per private-key operation. Never holds data, digests, results or key material. */
export interface AuditRecord {
  time: string;
  pid: number;
  uid: number;
  uri?: string;
  keyring?: string;
  op: string;
  alg?: string;
  digest?: string;
  length?: number;
  outcome: 'ok' | string;
  ms: number;
}

export type AuditSink = (record: AuditRecord) => void;

/** 'stderr', or a file opened for appending (0600); fd is the file's, for writers outside JavaScript. */
export function openAuditSink(target: string): { sink: AuditSink; close: () => void; fd?: number } {
  if (target === 'stderr') return { sink: (r) => process.stderr.write(JSON.stringify(r) + '\n'), close: () => {} };
  const fd = fs.openSync(target, 'a', 0o600);
  return {
    sink: (r) => fs.writeSync(fd, JSON.stringify(r) + '\n'),
    close: () => fs.closeSync(fd),
    fd,
  };
}
