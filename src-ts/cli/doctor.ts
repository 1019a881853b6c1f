/**
 * `kmsbridge doctor`: what each keyring is backed by and whether it answers,
 * read directly (not through the agent) with this user's config. For a
 * PKCS#11 keyring: the library, every slot and token (like pkcs11-tool
 * --list-slots), the PIN state, the mechanisms kmsbridge uses, and the
 * objects on the token (like --list-objects). It logs in only when the token
 * reports no failed login since the last success, so it cannot walk a token
 * toward lockout. PINs never appear in its output.
 */
import { Command } from 'commander';
import { loadConfig, type KeyringConfig } from '../config.js';
import { createBackend } from '../backends/index.js';
import { LocalBackend } from '../backends/local.js';
import type { Pkcs11Report } from '../backends/pkcs11.js';
import { TokenThreadBackend } from '../backends/pkcs11/thread-client.js';
import type { Backend } from '../backends/backend.js';
import type { GlobalOptions } from './main.js';

function pkcs11Lines(r: Pkcs11Report): string[] {
  const lines = [`  library:     ${r.library}${r.libraryInfo ? ` (${r.libraryInfo})` : ''}`];
  for (const s of r.slots) {
    const tok = !s.token
      ? 'no token'
      : !s.token.initialized
        ? 'an uninitialized token'
        : `token '${s.token.label}' (serial ${s.token.serial || '-'}, ${s.token.model || 'token'}${s.token.flags.length ? '; ' + s.token.flags.join(', ') : ''})`;
    lines.push(`  slot ${s.slot}: ${s.description || '(no description)'} — ${tok}`);
  }
  if (r.token) lines.push(`  using:       ${r.token}`);
  if (r.pinStatus) lines.push(`  user PIN:    ${r.pinStatus.length ? r.pinStatus.join(', ') : 'ok'}`);
  if (r.sessions) lines.push(`  sessions:    ${r.sessions}`);
  if (r.mechanisms) {
    lines.push('  mechanisms kmsbridge uses:');
    for (const m of r.mechanisms) lines.push(`    ${m.name.padEnd(28)} ${m.offered ? 'offered' : 'not offered'}`);
  }
  if (r.objects) {
    lines.push(`  objects (${r.objects.length}):`);
    for (const o of r.objects) {
      const name = o.keyId ?? (o.label || '(no label)');
      const cols = [o.class.padEnd(12), name, ...(o.kind ? [o.kind] : []), `id ${o.id || '(none)'}`, ...(o.access.length ? [o.access.join(', ')] : [])];
      lines.push(`    ${cols.join('  ')}`);
    }
  }
  for (const n of r.notes) lines.push(`  note: ${n}`);
  return lines;
}

/** A keyring's lines; ok false when it could not be read (a note says why). */
async function keyringLines(cfg: KeyringConfig, backend: Backend, opts: { login: boolean; timeoutMs: number }): Promise<{ lines: string[]; ok: boolean }> {
  const lines = [`keyring ${cfg.name} (${cfg.type})`];
  const signal = AbortSignal.timeout(opts.timeoutMs);
  try {
    if (backend instanceof TokenThreadBackend) {
      lines.push(...pkcs11Lines(await backend.doctor(signal, { login: opts.login })));
      return { lines, ok: true };
    }
    if (backend instanceof LocalBackend) lines.push(`  store:       ${backend.dir}`);
    lines.push(`  protection:  ${await backend.protectionSummary()}`);
    const keys = await backend.list(signal);
    lines.push(`  keys:        ${keys.length ? keys.map((k) => k.keyId).join(', ') : 'none'}`);
    return { lines, ok: true };
  } catch (err) {
    lines.push(`  note: ${(err as Error).message}`);
    return { lines, ok: false };
  }
}

export function doctorCommand(): Command {
  return new Command('doctor')
    .description('show what each keyring is backed by: PKCS#11 library, slots, tokens and key objects; local store and protection')
    .option('--keyring <keyring>', 'only this keyring')
    .option('--no-login', 'do not log into PKCS#11 tokens (private objects are then not listed)')
    .action(async (o: { keyring?: string; login: boolean }, cmd: Command) => {
      const g = cmd.optsWithGlobals<GlobalOptions>();
      const config = loadConfig(g.config);
      process.stdout.write(`config: ${config.source ?? 'built-in default (no config file)'}\n`);
      const names = o.keyring ? [o.keyring] : [...config.keyrings.keys()];
      let failed = false;
      for (const name of names) {
        const cfg = config.keyrings.get(name);
        if (!cfg) {
          process.stdout.write(`keyring ${name}: not in the config (known: ${[...config.keyrings.keys()].join(', ')})\n`);
          failed = true;
          continue;
        }
        let backend: Backend;
        try {
          backend = createBackend(cfg);
        } catch (err) {
          process.stdout.write(`keyring ${name} (${cfg.type})\n  note: ${(err as Error).message}\n`);
          failed = true;
          continue;
        }
        try {
          const { lines, ok } = await keyringLines(cfg, backend, { login: o.login, timeoutMs: g.timeout });
          process.stdout.write(lines.join('\n') + '\n');
          if (!ok) failed = true;
        } finally {
          await backend.close();
        }
      }
      if (failed) process.exitCode = 1;
    });
}
