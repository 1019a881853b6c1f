/** Error codes shared by the KeyService, the wire format and the C core (docs/wire-format.md). */
export enum ErrorCode {
  NOT_FOUND = 1,
  ACCESS_DENIED = 2,
  UNSUPPORTED = 3,
  BACKEND_UNAVAILABLE = 4,
  TIMEOUT = 5,
  BAD_REQUEST = 6,
  INTERNAL = 7,
  ALREADY_EXISTS = 8,
  KEY_UNUSABLE = 9,
  THROTTLED = 10,
  BAD_SIGNATURE = 11,
}

export type ErrorName = keyof typeof ErrorCode;

export function errorName(code: number): ErrorName {
  const name = ErrorCode[code] as ErrorName | undefined;
  return name ?? 'INTERNAL';
}

/**
 * The one error type of kmsbridge: a code that callers branch on and a message
 * for people that names the thing that is wrong and what to do about it.
 * Messages never contain key material.
 */
export class KmsError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KmsError';
    this.code = code;
  }

  get codeName(): ErrorName {
    return errorName(this.code);
  }
}

export const notFound = (msg: string) => new KmsError(ErrorCode.NOT_FOUND, msg);
export const badRequest = (msg: string) => new KmsError(ErrorCode.BAD_REQUEST, msg);
export const unsupported = (msg: string) => new KmsError(ErrorCode.UNSUPPORTED, msg);
export const keyUnusable = (msg: string) => new KmsError(ErrorCode.KEY_UNUSABLE, msg);

/** Wraps anything thrown into a KmsError without leaking a stack or internals into the message. */
export function asKmsError(err: unknown): KmsError {
  if (err instanceof KmsError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new KmsError(ErrorCode.INTERNAL, `internal error: ${message}`, { cause: err });
}
