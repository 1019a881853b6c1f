/**
 * Checks the AWS Signature Version 4 `Authorization` header of a request to
 * the test double, the way AWS does for a JSON-protocol POST to `/`: the
 * canonical request is rebuilt from the headers the client says it signed,
 * the signing key derived from the configured secret, and the signatures
 * compared. Failures come back as AWS's own error types and messages; no
 * secret ever appears in them.
 */
import crypto from 'node:crypto';

export interface TestCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface AuthFailure {
  status: number;
  type: string;
  message: string;
}

const ALGORITHM = 'AWS4-HMAC-SHA256';
const MAX_SKEW_MS = 15 * 60 * 1000;

const sha256Hex = (data: Buffer | string): string => crypto.createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string): Buffer => crypto.createHmac('sha256', key).update(data).digest();

/** Header values as sent, lower-cased names, repeated headers joined by commas. */
function headerValues(rawHeaders: string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    const list = out.get(name) ?? [];
    list.push(rawHeaders[i + 1]!.trim().replace(/\s+/g, ' '));
    out.set(name, list);
  }
  return out;
}

function parseAuthorization(
  value: string,
): { accessKeyId: string; date: string; region: string; service: string; signedHeaders: string[]; signature: string } | undefined {
  if (!value.startsWith(ALGORITHM + ' ')) return undefined;
  const parts = new Map<string, string>();
  for (const piece of value.slice(ALGORITHM.length + 1).split(',')) {
    const eq = piece.indexOf('=');
    if (eq > 0) parts.set(piece.slice(0, eq).trim(), piece.slice(eq + 1).trim());
  }
  const credential = parts.get('Credential')?.split('/');
  const signedHeaders = parts.get('SignedHeaders');
  const signature = parts.get('Signature');
  if (!credential || credential.length !== 5 || credential[4] !== 'aws4_request' || !signedHeaders || !signature) return undefined;
  const [accessKeyId, date, region, service] = credential as [string, string, string, string];
  return { accessKeyId, date, region, service, signedHeaders: signedHeaders.split(';'), signature };
}

function parseAmzDate(s: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m) return undefined;
  return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
}

/**
 * Returns undefined when the request is signed by one of `credentials` for
 * service `kms` in `region`, else the error AWS would answer with.
 */
export function verifySigV4(
  req: { method: string; url: string; rawHeaders: string[] },
  body: Buffer,
  credentials: readonly TestCredentials[],
  region: string,
  now: number = Date.now(),
): AuthFailure | undefined {
  const headers = headerValues(req.rawHeaders);
  const authorization = headers.get('authorization')?.[0];
  if (!authorization) return { status: 400, type: 'MissingAuthenticationTokenException', message: 'Missing Authentication Token' };
  const auth = parseAuthorization(authorization);
  if (!auth) {
    return {
      status: 400,
      type: 'IncompleteSignatureException',
      message: `Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters with algorithm ${ALGORITHM}.`,
    };
  }
  const cred = credentials.find((c) => c.accessKeyId === auth.accessKeyId);
  if (!cred) return { status: 400, type: 'UnrecognizedClientException', message: 'The security token included in the request is invalid.' };
  if (auth.service !== 'kms') {
    return { status: 400, type: 'InvalidSignatureException', message: `Credential should be scoped to correct service: 'kms'.` };
  }
  if (auth.region !== region) {
    return {
      status: 400,
      type: 'InvalidSignatureException',
      message: `Credential should be scoped to a valid region, not '${auth.region}'. This endpoint serves '${region}'.`,
    };
  }
  for (const required of ['host', 'x-amz-date']) {
    if (!auth.signedHeaders.includes(required)) {
      return { status: 400, type: 'InvalidSignatureException', message: `'${required}' must be a signed header.` };
    }
  }
  const amzDate = headers.get('x-amz-date')?.[0] ?? '';
  const when = parseAmzDate(amzDate);
  if (when === undefined || !amzDate.startsWith(auth.date)) {
    return { status: 400, type: 'IncompleteSignatureException', message: 'Date must be in ISO-8601 basic format and match the credential scope.' };
  }
  if (Math.abs(now - when) > MAX_SKEW_MS) {
    return {
      status: 400,
      type: 'InvalidSignatureException',
      message: 'Signature expired: the request time is more than 15 minutes away from the server time.',
    };
  }
  const token = headers.get('x-amz-security-token')?.[0];
  if ((cred.sessionToken ?? undefined) !== token) {
    return { status: 400, type: 'UnrecognizedClientException', message: 'The security token included in the request is invalid.' };
  }

  const canonicalHeaders = auth.signedHeaders.map((h) => `${h}:${(headers.get(h) ?? []).join(',')}\n`).join('');
  const [path, query = ''] = req.url.split('?', 2) as [string, string?];
  const canonicalQuery = query
    .split('&')
    .filter(Boolean)
    .map((kv) => kv.split('=', 2).map((x) => x ?? '') as [string, string])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v ?? ''}`)
    .join('&');
  const payloadHash = headers.get('x-amz-content-sha256')?.[0] ?? sha256Hex(body);
  const canonicalRequest = [req.method, path || '/', canonicalQuery, canonicalHeaders, auth.signedHeaders.join(';'), payloadHash].join('\n');
  const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
  const stringToSign = [ALGORITHM, amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  let key = hmac('AWS4' + cred.secretAccessKey, auth.date);
  key = hmac(key, auth.region);
  key = hmac(key, auth.service);
  key = hmac(key, 'aws4_request');
  const expected = crypto.createHmac('sha256', key).update(stringToSign).digest();
  const given = Buffer.from(auth.signature, 'hex');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return {
      status: 400,
      type: 'InvalidSignatureException',
      message: 'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.',
    };
  }
  return undefined;
}
