/**
 * AWS KMS failures as kmsbridge's typed errors, keeping AWS's own message,
 * and which of them are worth another attempt. Messages name the endpoint
 * and never carry credentials: anything shaped like an access key id is
 * masked, and the SDK's messages never include secrets.
 */
import { ErrorCode, KmsError } from '../../errors.js';

/** How a failure may be retried: never, only when the request surely did nothing (throttling), or whenever it is transient. */
export type Retry = 'no' | 'throttle' | 'transient';

const BY_TYPE: Record<string, ErrorCode> = {
  NotFoundException: ErrorCode.NOT_FOUND,
  DisabledException: ErrorCode.KEY_UNUSABLE,
  KMSInvalidStateException: ErrorCode.KEY_UNUSABLE,
  KeyUnavailableException: ErrorCode.KEY_UNUSABLE,
  AccessDeniedException: ErrorCode.ACCESS_DENIED,
  NotAuthorizedException: ErrorCode.ACCESS_DENIED,
  UnrecognizedClientException: ErrorCode.ACCESS_DENIED,
  InvalidSignatureException: ErrorCode.ACCESS_DENIED,
  IncompleteSignatureException: ErrorCode.ACCESS_DENIED,
  MissingAuthenticationTokenException: ErrorCode.ACCESS_DENIED,
  ExpiredTokenException: ErrorCode.ACCESS_DENIED,
  InvalidClientTokenId: ErrorCode.ACCESS_DENIED,
  CredentialsProviderError: ErrorCode.ACCESS_DENIED,
  InvalidKeyUsageException: ErrorCode.UNSUPPORTED,
  UnsupportedOperationException: ErrorCode.UNSUPPORTED,
  ThrottlingException: ErrorCode.THROTTLED,
  TooManyRequestsException: ErrorCode.THROTTLED,
  LimitExceededException: ErrorCode.THROTTLED,
  AlreadyExistsException: ErrorCode.ALREADY_EXISTS,
  ValidationException: ErrorCode.BAD_REQUEST,
  InvalidArnException: ErrorCode.BAD_REQUEST,
  InvalidAliasNameException: ErrorCode.BAD_REQUEST,
  InvalidCiphertextException: ErrorCode.BAD_REQUEST,
  IncorrectKeyException: ErrorCode.BAD_REQUEST,
  InvalidMarkerException: ErrorCode.BAD_REQUEST,
  SerializationException: ErrorCode.BAD_REQUEST,
  KMSInvalidSignatureException: ErrorCode.BAD_REQUEST,
  KMSInternalException: ErrorCode.BACKEND_UNAVAILABLE,
  DependencyTimeoutException: ErrorCode.BACKEND_UNAVAILABLE,
  ServiceUnavailableException: ErrorCode.BACKEND_UNAVAILABLE,
  InternalFailure: ErrorCode.BACKEND_UNAVAILABLE,
};

const THROTTLING = new Set(['ThrottlingException', 'TooManyRequestsException', 'RequestLimitExceeded']);
const NETWORK_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);

/** What the backend needs to know about a thrown SDK error. */
export interface Failure {
  /** AWS's error type (`NotFoundException`), or a network / SDK error name. */
  type: string;
  message: string;
  status?: number;
  /** The Node error code of a network failure (ECONNREFUSED). */
  code?: string;
  kind: 'throttle' | 'server' | 'network' | 'malformed' | 'credentials' | 'region' | 'aborted' | 'refused';
}

export function classify(err: unknown): Failure {
  const e = (typeof err === 'object' && err !== null ? err : { message: String(err) }) as {
    name?: string;
    message?: string;
    code?: string;
    $fault?: string;
    $metadata?: { httpStatusCode?: number };
  };
  const type = e.name ?? 'Error';
  const message = clean(e.message ?? '');
  const status = e.$metadata?.httpStatusCode;
  const base = { type, message, ...(status !== undefined ? { status } : {}), ...(e.code ? { code: e.code } : {}) };
  if (type === 'AbortError') return { ...base, kind: 'aborted' };
  if (THROTTLING.has(type)) return { ...base, kind: 'throttle' };
  if (type === 'CredentialsProviderError' || /could not load credentials/i.test(message)) return { ...base, kind: 'credentials' };
  if (/region is missing/i.test(message)) return { ...base, kind: 'region' };
  if (type === 'SyntaxError' || /deserialization error/i.test(message)) return { ...base, kind: 'malformed', message: message.split('\n')[0]! };
  if ((status !== undefined && status >= 500) || e.$fault === 'server') return { ...base, kind: 'server' };
  if ((e.code && NETWORK_CODES.has(e.code)) || type === 'TimeoutError' || /socket hang up/i.test(message)) return { ...base, kind: 'network' };
  return { ...base, kind: 'refused' };
}

export function retryable(f: Failure, policy: Retry): boolean {
  if (policy === 'no') return false;
  if (f.kind === 'throttle') return true;
  if (policy === 'throttle') return f.code === 'ECONNREFUSED'; // nothing reached the service
  return f.kind === 'server' || f.kind === 'network' || f.kind === 'malformed';
}

/** Masks access key ids and bounds the length of a message that came from outside. */
export function clean(message: string): string {
  const masked = message.replace(/\b(AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b/g, '<access key id>');
  return masked.length > 400 ? masked.slice(0, 400) + '…' : masked;
}

export interface Context {
  keyring: string;
  /** The endpoint or regional default, for messages. */
  where: string;
  profile?: string;
  op: string;
  keyId?: string;
  attempts: number;
}

function subject(c: Context): string {
  return `AWS KMS ${c.op}${c.keyId ? ` for ${c.keyId}` : ''} (keyring '${c.keyring}', ${c.where})`;
}

/** The KmsError for a failure that will not be retried (again). */
export function toKmsError(f: Failure, c: Context, cause: unknown): KmsError {
  const tries = c.attempts > 1 ? ` after ${c.attempts} attempts` : '';
  switch (f.kind) {
    case 'credentials':
      return new KmsError(
        ErrorCode.ACCESS_DENIED,
        `${subject(c)}: no AWS credentials (${f.message}); ${c.profile ? `check profile '${c.profile}' in ~/.aws/config and ~/.aws/credentials` : 'set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, use an instance role, or set profile in [keyrings.' + c.keyring + ']'}`,
        { cause },
      );
    case 'region':
      return new KmsError(ErrorCode.BAD_REQUEST, `${subject(c)}: no AWS region; set region in [keyrings.${c.keyring}] (or AWS_REGION)`, { cause });
    case 'network':
      return new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `${subject(c)}: cannot reach ${c.where}${tries}: ${f.message}`, { cause });
    case 'malformed':
      return new KmsError(ErrorCode.BACKEND_UNAVAILABLE, `${subject(c)}: malformed answer from ${c.where}${tries}: ${f.message}`, { cause });
    case 'throttle':
      return new KmsError(
        ErrorCode.THROTTLED,
        `${subject(c)}: throttled by AWS KMS${tries}: ${f.message || f.type}; lower the request rate or ask AWS for a higher quota`,
        { cause },
      );
    case 'server':
      return new KmsError(
        BY_TYPE[f.type] ?? ErrorCode.BACKEND_UNAVAILABLE,
        `${subject(c)}: AWS KMS failed${tries}: ${f.type}: ${f.message || `HTTP ${f.status ?? '5xx'}`}`,
        { cause },
      );
    case 'aborted':
      return new KmsError(ErrorCode.TIMEOUT, `${subject(c)}: cancelled`, { cause });
    case 'refused': {
      const code = BY_TYPE[f.type] ?? ErrorCode.BACKEND_UNAVAILABLE;
      const hint = code === ErrorCode.ACCESS_DENIED ? '; check the credentials and the key policy' : '';
      return new KmsError(code, `${subject(c)}: ${f.type}: ${f.message || 'no message'}${hint}`, { cause });
    }
  }
}

export function timeoutError(c: Context, budgetMs: number, last: Failure | undefined, timeoutKey: string): KmsError {
  const lastly = last ? `; last failure: ${last.type}: ${last.message}` : '';
  return new KmsError(
    ErrorCode.TIMEOUT,
    `${subject(c)}: no answer from ${c.where} within ${budgetMs} ms (${c.attempts} attempt${c.attempts === 1 ? '' : 's'}${lastly}); check that this host can reach the endpoint (a firewall that drops packets looks like this), or raise ${timeoutKey}`,
  );
}
