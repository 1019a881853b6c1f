/**
 * The AWS KMS backend (`type = "aws"`): private keys stay in AWS KMS; kmsbridge
 * sends it digests (whole messages for Ed25519) and gets signatures,
 * plaintexts and shared secrets back. One KMSClient per keyring, reused, with
 * credentials from the SDK's default chain or the keyring's profile (the SDK
 * refreshes them). Each backend method is bounded by a deadline a little
 * inside the keyring's timeout, so that an unreachable endpoint fails with a
 * message naming it rather than with the KeyService's generic timeout;
 * within it, throttling and transient failures are retried with exponential
 * backoff and jitter. Public keys (with the algorithms AWS allows for the
 * key) are fetched once per key-id and kept.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DeleteAliasCommand,
  DeriveSharedSecretCommand,
  DescribeKeyCommand,
  GenerateRandomCommand,
  GetPublicKeyCommand,
  KMSClient,
  ListAliasesCommand,
  ListKeysCommand,
  type ListAliasesCommandOutput,
  type ListKeysCommandOutput,
  ScheduleKeyDeletionCommand,
  SignCommand,
} from '@aws-sdk/client-kms';
import { ErrorCode, KmsError, badRequest } from '../errors.js';
import type { KeyringConfig } from '../config.js';
import type { DecryptRequest, KeySpec, SignRequest } from '../types.js';
import type { Backend, BackendKeyDescription, BackendKeySummary, Progress } from './backend.js';
import { classify, retryable, timeoutError, toKmsError, type Context, type Failure, type Retry } from './aws/errors.js';
import {
  RANDOM_CHUNK,
  checkDerive,
  createParameters,
  decryptAlgorithm,
  describeKey,
  isUsableSpec,
  signParameters,
  specInfo,
  type AwsKeyInfo,
} from './aws/mapping.js';
import { readAwsSettings, type AwsSettings } from './aws/settings.js';

const BACKOFF_BASE_MS = 50;
const BACKOFF_CAP_MS = 2000;
const LIST_CONCURRENCY = 8;
/** AWS alias names: `alias/` and then these, not under the reserved `alias/aws/`. */
const ALIAS_NAME = /^[a-zA-Z0-9/_-]{1,250}$/;

/** Key ARNs and alias ARNs: `arn:<partition>:kms:<region>:<account>:key/<id>` or `:alias/<name>`. */
const ALIAS_ARN = /^arn:[a-z-]+:kms:[a-z0-9-]+:\d{12}:(alias\/.+)$/;

export class AwsBackend implements Backend {
  readonly type = 'aws';
  private readonly settings: AwsSettings;
  get location(): string {
    return this.settings.where;
  }
  /** The part of the keyring's timeout the backend may use, so its own, more specific error comes first. */
  private readonly budgetMs: number;
  private client?: KMSClient;
  private readonly keys = new Map<string, Promise<AwsKeyInfo>>();

  constructor(private readonly cfg: KeyringConfig) {
    this.settings = readAwsSettings(cfg);
    // A fifth of the timeout, 250 ms to 1 s: enough for a busy host to turn our abort into an error before the KeyService's timer fires.
    const margin = Math.min(1000, Math.max(250, Math.floor(cfg.timeoutMs / 5)));
    this.budgetMs = Math.max(Math.ceil(cfg.timeoutMs / 2), cfg.timeoutMs - margin);
  }

  private kms(): KMSClient {
    if (!this.client) {
      // The SDK warns on every Node < 22 process it runs in — here the application's own process (Node door). Say it once in our docs instead.
      process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
      const s = this.settings;
      this.client = new KMSClient({
        ...(s.region ? { region: s.region } : {}),
        ...(s.endpoint ? { endpoint: s.endpoint } : {}),
        ...(s.profile ? { profile: s.profile } : {}),
        // Retries are ours (below): they must stay inside the keyring's timeout.
        maxAttempts: 1,
        requestHandler: { connectionTimeout: this.budgetMs },
      });
    }
    return this.client;
  }

  private deadline(): number {
    return Date.now() + this.budgetMs;
  }

  /** One AWS KMS request, retried as `retry` allows while the deadline allows. */
  private async call<T>(
    op: string,
    keyId: string | undefined,
    deadline: number,
    signal: AbortSignal,
    retry: Retry,
    send: (client: KMSClient, abortSignal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    const ctx: Context = {
      keyring: this.cfg.name,
      where: this.settings.where,
      ...(this.settings.profile ? { profile: this.settings.profile } : {}),
      op,
      ...(keyId ? { keyId } : {}),
      attempts: 0,
    };
    let last: Failure | undefined;
    for (;;) {
      ctx.attempts++;
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw timeoutError(ctx, this.budgetMs, last, `timeout_ms in [keyrings.${this.cfg.name}]`);
      const attemptSignal = AbortSignal.any([signal, AbortSignal.timeout(remaining)]);
      try {
        return await send(this.kms(), attemptSignal);
      } catch (err) {
        if (err instanceof KmsError) throw err;
        const f = classify(err);
        if (f.kind === 'aborted' || Date.now() >= deadline) {
          ctx.attempts = Math.max(1, ctx.attempts);
          throw timeoutError(ctx, this.budgetMs, f.kind === 'aborted' ? last : f, `timeout_ms in [keyrings.${this.cfg.name}]`);
        }
        if (!retryable(f, retry) || ctx.attempts >= this.settings.maxAttempts) throw toKmsError(f, ctx, err);
        last = f;
        // Exponential backoff with "equal jitter": at least half the step, so retries do spread out.
        const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (ctx.attempts - 1));
        const delay = step / 2 + Math.random() * (step / 2);
        if (Date.now() + delay >= deadline) throw toKmsError(f, ctx, err);
        try {
          await sleep(delay, undefined, { signal });
        } catch {
          throw timeoutError(ctx, this.budgetMs, last, `timeout_ms in [keyrings.${this.cfg.name}]`);
        }
      }
    }
  }

  /** GetPublicKey once per key-id; a failure is not kept. */
  private keyInfo(keyId: string, deadline: number, signal: AbortSignal): Promise<AwsKeyInfo> {
    let p = this.keys.get(keyId);
    if (!p) {
      p = this.call('GetPublicKey', keyId, deadline, signal, 'transient', (c, s) => c.send(new GetPublicKeyCommand({ KeyId: keyId }), { abortSignal: s })).then(
        (r) => describeKey(keyId, r),
      );
      this.keys.set(keyId, p);
      p.catch(() => this.keys.delete(keyId));
    }
    return p;
  }

  /** Forgets a key AWS says is gone or unusable, so the next use asks again. */
  private forgetOn<T>(keyId: string, p: Promise<T>): Promise<T> {
    return p.catch((err: unknown) => {
      if (err instanceof KmsError && (err.code === ErrorCode.NOT_FOUND || err.code === ErrorCode.KEY_UNUSABLE)) this.keys.delete(keyId);
      throw err;
    });
  }

  async describe(keyId: string, signal: AbortSignal): Promise<BackendKeyDescription> {
    return (await this.keyInfo(keyId, this.deadline(), signal)).description;
  }

  async sign(keyId: string, req: SignRequest, signal: AbortSignal): Promise<Buffer> {
    const deadline = this.deadline();
    const key = await this.keyInfo(keyId, deadline, signal);
    const p = signParameters(key, keyId, req);
    // The key ARN GetPublicKey named, not the alias: the signature must match the public key already handed out.
    const out = await this.forgetOn(
      keyId,
      this.call('Sign', keyId, deadline, signal, 'transient', (c, s) =>
        c.send(new SignCommand({ KeyId: key.arn, Message: req.data, MessageType: p.MessageType, SigningAlgorithm: p.SigningAlgorithm }), { abortSignal: s }),
      ),
    );
    if (!out.Signature?.length) throw this.empty('Sign', keyId, 'signature');
    return Buffer.from(out.Signature);
  }

  async decrypt(keyId: string, req: DecryptRequest, signal: AbortSignal): Promise<Buffer> {
    const deadline = this.deadline();
    const key = await this.keyInfo(keyId, deadline, signal);
    const algorithm = decryptAlgorithm(key, keyId, req);
    const out = await this.forgetOn(
      keyId,
      this.call('Decrypt', keyId, deadline, signal, 'transient', (c, s) =>
        c.send(new DecryptCommand({ KeyId: key.arn, CiphertextBlob: req.data, EncryptionAlgorithm: algorithm }), { abortSignal: s }),
      ),
    );
    if (!out.Plaintext) throw this.empty('Decrypt', keyId, 'plaintext');
    return Buffer.from(out.Plaintext);
  }

  async derive(keyId: string, peerSpki: Buffer, signal: AbortSignal): Promise<Buffer> {
    const deadline = this.deadline();
    const key = await this.keyInfo(keyId, deadline, signal);
    checkDerive(key, keyId);
    const out = await this.forgetOn(
      keyId,
      this.call('DeriveSharedSecret', keyId, deadline, signal, 'transient', (c, s) =>
        c.send(new DeriveSharedSecretCommand({ KeyId: key.arn, KeyAgreementAlgorithm: 'ECDH', PublicKey: peerSpki }), { abortSignal: s }),
      ),
    );
    if (!out.SharedSecret?.length) throw this.empty('DeriveSharedSecret', keyId, 'shared secret');
    return Buffer.from(out.SharedSecret);
  }

  async random(length: number, signal: AbortSignal): Promise<Buffer> {
    const deadline = this.deadline();
    const parts: Buffer[] = [];
    for (let have = 0; have < length;) {
      const n = Math.min(RANDOM_CHUNK, length - have);
      const out = await this.call('GenerateRandom', undefined, deadline, signal, 'transient', (c, s) =>
        c.send(new GenerateRandomCommand({ NumberOfBytes: n }), { abortSignal: s }),
      );
      if (!out.Plaintext || out.Plaintext.length !== n) throw this.empty('GenerateRandom', undefined, `${n} random bytes`);
      parts.push(Buffer.from(out.Plaintext));
      have += n;
    }
    return Buffer.concat(parts);
  }

  async create(name: string, spec: KeySpec, signal: AbortSignal, progress?: Progress): Promise<{ keyId: string }> {
    if (!ALIAS_NAME.test(name) || name.startsWith('aws/') || name.startsWith('alias/')) {
      throw badRequest(
        `key name '${name}' cannot be an AWS KMS alias (keyring '${this.cfg.name}'): use letters, digits, '/', '_' and '-' (the key becomes alias/${name}; 'aws/' is reserved)`,
      );
    }
    const params = createParameters(spec, this.settings.keyUsage, this.cfg.name);
    const alias = `alias/${name}`;
    const deadline = this.deadline();
    try {
      await this.call('DescribeKey', alias, deadline, signal, 'transient', (c, s) => c.send(new DescribeKeyCommand({ KeyId: alias }), { abortSignal: s }));
      throw new KmsError(
        ErrorCode.ALREADY_EXISTS,
        `AWS KMS alias ${alias} already exists (keyring '${this.cfg.name}', kms:${this.cfg.name}/${alias}); pick another name or delete it first`,
      );
    } catch (err) {
      if (!(err instanceof KmsError && err.code === ErrorCode.NOT_FOUND)) throw err;
    }
    progress?.(`creating ${params.KeySpec} key for ${params.KeyUsage} in AWS KMS (${this.settings.where})`);
    // CreateKey is not idempotent: retry it only when AWS surely did nothing (throttled, connection refused).
    const created = await this.call('CreateKey', alias, deadline, signal, 'throttle', (c, s) =>
      c.send(new CreateKeyCommand({ ...params, Description: `kmsbridge key '${name}'`, Tags: [{ TagKey: 'kmsbridge:name', TagValue: name }] }), {
        abortSignal: s,
      }),
    );
    const id = created.KeyMetadata?.KeyId;
    if (!id) throw this.empty('CreateKey', alias, 'key id');
    try {
      await this.call('CreateAlias', alias, deadline, signal, 'throttle', (c, s) =>
        c.send(new CreateAliasCommand({ AliasName: alias, TargetKeyId: id }), { abortSignal: s }),
      );
    } catch (err) {
      // Do not leave a nameless key behind (best effort; it would only cost money).
      await this.call('ScheduleKeyDeletion', id, this.deadline(), AbortSignal.timeout(this.budgetMs), 'throttle', (c, s) =>
        c.send(new ScheduleKeyDeletionCommand({ KeyId: id, PendingWindowInDays: 7 }), { abortSignal: s }),
      ).catch(() => undefined);
      throw err;
    }
    this.keys.delete(alias);
    return { keyId: alias };
  }

  async list(signal: AbortSignal): Promise<BackendKeySummary[]> {
    const deadline = this.deadline();
    const keyIds: string[] = [];
    let marker: string | undefined;
    do {
      const m: string | undefined = marker;
      const page: ListKeysCommandOutput = await this.call('ListKeys', undefined, deadline, signal, 'transient', (c, s) =>
        c.send(new ListKeysCommand({ Limit: 1000, ...(m ? { Marker: m } : {}) }), { abortSignal: s }),
      );
      for (const k of page.Keys ?? []) if (k.KeyId) keyIds.push(k.KeyId);
      marker = page.Truncated ? page.NextMarker : undefined;
    } while (marker);
    const aliasOf = new Map<string, string>();
    marker = undefined;
    do {
      const m: string | undefined = marker;
      const page: ListAliasesCommandOutput = await this.call('ListAliases', undefined, deadline, signal, 'transient', (c, s) =>
        c.send(new ListAliasesCommand({ Limit: 100, ...(m ? { Marker: m } : {}) }), { abortSignal: s }),
      );
      for (const a of page.Aliases ?? []) {
        if (!a.TargetKeyId || !a.AliasName || a.AliasName.startsWith('alias/aws/')) continue;
        const prev = aliasOf.get(a.TargetKeyId);
        if (!prev || a.AliasName < prev) aliasOf.set(a.TargetKeyId, a.AliasName);
      }
      marker = page.Truncated ? page.NextMarker : undefined;
    } while (marker);

    const out: (BackendKeySummary | undefined)[] = new Array(keyIds.length);
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < keyIds.length; i = next++) {
        const id = keyIds[i]!;
        const r = await this.call('DescribeKey', id, deadline, signal, 'transient', (c, s) =>
          c.send(new DescribeKeyCommand({ KeyId: id }), { abortSignal: s }),
        );
        const md = r.KeyMetadata;
        if (!md || !isUsableSpec(md.KeySpec) || md.KeyState === 'PendingDeletion' || md.KeyState === 'PendingImport') continue;
        const info = specInfo(md.KeySpec, id);
        out[i] = { keyId: aliasOf.get(id) ?? id, keyType: info.keyType, bits: info.bits, ...(info.curve ? { curve: info.curve } : {}) };
      }
    };
    await Promise.all(Array.from({ length: Math.min(LIST_CONCURRENCY, keyIds.length) }, worker));
    return out.filter((k): k is BackendKeySummary => k !== undefined).sort((a, b) => (a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : 0));
  }

  /**
   * AWS KMS never deletes a key at once: this schedules its deletion after
   * pending_window_days (30 unless set; AWS allows 7 to 30; CancelKeyDeletion
   * undoes it), and removes the alias the key was named by, so the name can
   * be used again.
   */
  async delete(keyId: string, signal: AbortSignal): Promise<void> {
    const deadline = this.deadline();
    this.keys.delete(keyId);
    const r = await this.call('DescribeKey', keyId, deadline, signal, 'transient', (c, s) =>
      c.send(new DescribeKeyCommand({ KeyId: keyId }), { abortSignal: s }),
    );
    const id = r.KeyMetadata?.KeyId;
    if (!id) throw this.empty('DescribeKey', keyId, 'key id');
    if (r.KeyMetadata?.KeyState !== 'PendingDeletion') {
      await this.call('ScheduleKeyDeletion', keyId, deadline, signal, 'throttle', (c, s) =>
        c.send(new ScheduleKeyDeletionCommand({ KeyId: id, PendingWindowInDays: this.settings.pendingWindowDays }), { abortSignal: s }),
      );
    }
    const alias = keyId.startsWith('alias/') ? keyId : ALIAS_ARN.exec(keyId)?.[1];
    if (alias) {
      await this.call('DeleteAlias', keyId, deadline, signal, 'throttle', (c, s) => c.send(new DeleteAliasCommand({ AliasName: alias }), { abortSignal: s }));
    }
  }

  async protectionSummary(): Promise<string> {
    const s = this.settings;
    const creds = s.profile ? `profile '${s.profile}'` : 'the AWS default credential chain';
    return `AWS KMS at ${s.where}${s.region ? ` (${s.region})` : ''}, credentials from ${creds}; keys delete schedules deletion after ${s.pendingWindowDays} days`;
  }

  async close(): Promise<void> {
    this.keys.clear();
    this.client?.destroy();
    this.client = undefined;
  }

  private empty(op: string, keyId: string | undefined, what: string): KmsError {
    return new KmsError(
      ErrorCode.BACKEND_UNAVAILABLE,
      `AWS KMS ${op}${keyId ? ` for ${keyId}` : ''} (keyring '${this.cfg.name}', ${this.settings.where}) returned no ${what}`,
    );
  }
}
