import os from 'node:os';
import path from 'node:path';

/** Where kmsbridge looks for things, per the XDG base directory conventions. */

function home(): string {
  return process.env.HOME || os.homedir();
}

export function configCandidates(): string[] {
  if (process.env.KMSBRIDGE_CONFIG) return [process.env.KMSBRIDGE_CONFIG];
  const xdg = process.env.XDG_CONFIG_HOME || path.join(home(), '.config');
  return [path.join(xdg, 'kmsbridge', 'config.toml'), '/etc/kmsbridge/config.toml'];
}

export function defaultLocalStore(): string {
  const xdg = process.env.XDG_DATA_HOME || path.join(home(), '.local', 'share');
  return path.join(xdg, 'kmsbridge', 'keys');
}

/** The agent socket: KMSBRIDGE_AGENT_SOCK, else $XDG_RUNTIME_DIR/kmsbridge/agent.sock, else a per-user directory in /tmp. */
export function defaultAgentSocket(): string {
  if (process.env.KMSBRIDGE_AGENT_SOCK) return process.env.KMSBRIDGE_AGENT_SOCK;
  if (process.env.XDG_RUNTIME_DIR) return path.join(process.env.XDG_RUNTIME_DIR, 'kmsbridge', 'agent.sock');
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  // Literal /tmp, not TMPDIR: the C channel must find the same path without Node's help.
  return path.join('/tmp', `kmsbridge-${uid}`, 'agent.sock');
}
