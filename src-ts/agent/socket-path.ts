import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ErrorCode, KmsError } from '../errors.js';

/**
 * Makes the socket's directory safe before listening: created 0700 if
 * missing; refused if another user owns it or others may write into it
 * (they could swap the socket for their own).
 */
export function prepareSocketDir(socketPath: string): void {
  const dir = path.dirname(socketPath);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.statSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid) {
    throw new KmsError(
      ErrorCode.ACCESS_DENIED,
      `socket directory ${dir} belongs to uid ${st.uid}, not to this user (uid ${uid}); choose another KMSBRIDGE_AGENT_SOCK`,
    );
  }
  if ((st.mode & 0o022) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new KmsError(ErrorCode.ACCESS_DENIED, `socket directory ${dir} has mode ${mode}, writable by other users; run: chmod 700 ${dir}`);
  }
}

/** Resolves true if something accepts connections on the path. */
export function isLive(socketPath: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    const done = (live: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(live);
    };
    const timer = setTimeout(() => done(true), timeoutMs); // a listener too busy to accept is still alive
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** Removes a stale socket left by a dead agent; refuses a live one or a path that is not a socket. */
export async function clearStaleSocket(socketPath: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    throw new KmsError(ErrorCode.BAD_REQUEST, `${socketPath} exists and is not a socket; remove it or choose another KMSBRIDGE_AGENT_SOCK`);
  }
  if (await isLive(socketPath)) {
    throw new KmsError(ErrorCode.ALREADY_EXISTS, `an agent is already listening on ${socketPath}; stop it first (or use it)`);
  }
  fs.unlinkSync(socketPath);
}
