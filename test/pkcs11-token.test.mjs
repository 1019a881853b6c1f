// The PKCS#11 token logic on failures SoftHSM2 cannot be made to produce: a
// token at its final PIN try or locked, a session, a login or the whole token
// lost mid-flight, a token out of sessions, a fork. The binding is replaced by
// a scripted fake token (through Node's require cache, so kmsbridge loads it
// as it would load pkcs11js); the fake counts what kmsbridge asks of it.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const CKR = {
  PIN_INCORRECT: 0xa0,
  PIN_LOCKED: 0xa4,
  SESSION_HANDLE_INVALID: 0xb3,
  SESSION_COUNT: 0xb1,
  USER_NOT_LOGGED_IN: 0x101,
  TOKEN_NOT_PRESENT: 0xe0,
  USER_ALREADY_LOGGED_IN: 0x100,
};
const FLAGS = { LOGIN_REQUIRED: 0x4, USER_PIN_INITIALIZED: 0x8, TOKEN_INITIALIZED: 0x400, USER_PIN_FINAL_TRY: 0x20000, USER_PIN_LOCKED: 0x40000 };
const NAMES = Object.fromEntries(Object.entries(CKR).map(([k, v]) => [v, `CKR_${k}`]));

function ckr(code) {
  return Object.assign(new Error(NAMES[code] ?? `CKR_0x${code.toString(16)}`), { name: 'Pkcs11Error', code });
}

/** One scripted token; `fail[method]` is a list of CK_RVs its next calls return. */
let token;
function newToken(extra = {}) {
  token = {
    pin: '1234',
    flags: FLAGS.LOGIN_REQUIRED | FLAGS.USER_PIN_INITIALIZED | FLAGS.TOKEN_INITIALIZED,
    loggedIn: false,
    open: new Set(),
    maxOpen: 0,
    next: 1,
    calls: {},
    fail: {},
    sessionLimit: Infinity,
    ...extra,
  };
  return token;
}

class FakePkcs11 {
  #count(m) {
    token.calls[m] = (token.calls[m] ?? 0) + 1;
    const f = token.fail[m];
    if (f?.length) throw ckr(f.shift());
  }
  load() {}
  close() {}
  C_Initialize() {
    this.#count('C_Initialize');
  }
  C_Finalize() {
    this.#count('C_Finalize');
  }
  C_GetSlotList() {
    this.#count('C_GetSlotList');
    return [Buffer.from([7, 0, 0, 0, 0, 0, 0, 0])];
  }
  C_GetTokenInfo() {
    this.#count('C_GetTokenInfo');
    return {
      label: 'fake'.padEnd(32),
      serialNumber: '0001'.padEnd(16),
      model: 'Fake'.padEnd(16),
      manufacturerID: 'test'.padEnd(32),
      flags: token.flags,
      maxSessionCount: 0,
      maxRwSessionCount: 0,
    };
  }
  C_OpenSession() {
    this.#count('C_OpenSession');
    if (token.open.size >= token.sessionLimit) throw ckr(CKR.SESSION_COUNT);
    const h = Buffer.alloc(8);
    h.writeUInt32LE(token.next++);
    token.open.add(h.readUInt32LE());
    token.maxOpen = Math.max(token.maxOpen, token.open.size);
    return h;
  }
  C_CloseSession(h) {
    this.#count('C_CloseSession');
    token.open.delete(h.readUInt32LE());
    if (token.open.size === 0) token.loggedIn = false;
  }
  C_GetSessionInfo() {
    return { state: token.loggedIn ? 3 : 2 };
  }
  C_Login(h, type, pin) {
    this.#count('C_Login');
    if (token.loggedIn) throw ckr(CKR.USER_ALREADY_LOGGED_IN);
    if (pin !== token.pin) throw ckr(CKR.PIN_INCORRECT);
    token.loggedIn = true;
  }
  C_GenerateRandom(h, buf) {
    this.#count('C_GenerateRandom');
    if (!token.open.has(h.readUInt32LE())) throw ckr(CKR.SESSION_HANDLE_INVALID);
    if (!token.loggedIn) throw ckr(CKR.USER_NOT_LOGGED_IN);
    return buf.fill(0x5a);
  }
}

require.cache[require.resolve('pkcs11js')] = { id: 'pkcs11js', filename: require.resolve('pkcs11js'), loaded: true, exports: { PKCS11: FakePkcs11 } };
const { Pkcs11Backend } = require('../dist/backends/pkcs11.js');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsbridge-fake-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const pinFile = path.join(dir, 'pin');

function backend(t, settings = {}) {
  const b = new Pkcs11Backend({
    name: 'fake',
    type: 'pkcs11',
    timeoutMs: 5000,
    allowSha1: false,
    allowPkcs1Decrypt: false,
    allowUids: [],
    allowGids: [],
    // Any readable file stands in for the library: the fake binding does not load it.
    settings: { type: 'pkcs11', library: fileURLToPath(import.meta.url), token_label: 'fake', pin_file: pinFile, max_sessions: 4, ...settings },
  });
  t.teardown(() => b.close());
  return b;
}
const signal = () => AbortSignal.timeout(5000);
const setPin = (pin) => fs.writeFileSync(pinFile, pin, { mode: 0o600 });

t.test('a wrong PIN is tried once however many requests come, and a corrected pin_file is tried once more', async (t) => {
  newToken();
  setPin('0000');
  const b = backend(t);
  const results = await Promise.allSettled(Array.from({ length: 8 }, () => b.random(8, signal())));
  t.ok(
    results.every((r) => r.status === 'rejected' && r.reason.codeName === 'ACCESS_DENIED'),
    'every request refused',
  );
  t.equal(token.calls.C_Login, 1, 'one C_Login for eight requests');
  t.match(results[1].reason.message, /rejected the PIN from pin_file .*; kmsbridge does not try a rejected PIN again/);
  t.notMatch(results.map((r) => r.reason.message).join('\n'), /0000|1234/, 'no PIN in any message');
  setPin('1234\n');
  t.same(await b.random(4, signal()), Buffer.alloc(4, 0x5a));
  t.equal(token.calls.C_Login, 2);
});

t.test('a token at its final PIN try, or locked, is not logged into at all', async (t) => {
  setPin('1234');
  newToken().flags |= FLAGS.USER_PIN_FINAL_TRY;
  await t.rejects(backend(t).random(8, signal()), {
    codeName: 'ACCESS_DENIED',
    message: /one more wrong PIN locks it \(CKF_USER_PIN_FINAL_TRY\), so kmsbridge will not log in/,
  });
  t.equal(token.calls.C_Login, undefined, 'no C_Login');
  newToken().flags |= FLAGS.USER_PIN_LOCKED;
  await t.rejects(backend(t).random(8, signal()), {
    codeName: 'ACCESS_DENIED',
    message: /user PIN of token 'fake' is locked .*kmsbridge did not try to log in/,
  });
  t.equal(token.calls.C_Login, undefined, 'no C_Login');
});

t.test('a session that went away is replaced, a lost login is redone, a token that went away is found again', async (t) => {
  setPin('1234');
  newToken();
  const b = backend(t);
  await b.random(8, signal());
  token.fail.C_GenerateRandom = [CKR.SESSION_HANDLE_INVALID];
  t.same(await b.random(8, signal()), Buffer.alloc(8, 0x5a), 'after a lost session');
  t.equal(token.calls.C_OpenSession, 2, 'a new session was opened');
  const logins = token.calls.C_Login;
  token.fail.C_GenerateRandom = [CKR.USER_NOT_LOGGED_IN];
  t.same(await b.random(8, signal()), Buffer.alloc(8, 0x5a), 'after a lost login');
  t.equal(token.calls.C_Login, logins + 1, 'logged in again');
  const lists = token.calls.C_GetSlotList;
  token.fail.C_GenerateRandom = [CKR.TOKEN_NOT_PRESENT];
  t.same(await b.random(8, signal()), Buffer.alloc(8, 0x5a), 'after the token went away and came back');
  t.ok(token.calls.C_GetSlotList > lists, 'the slot was looked up again');
  token.fail.C_GenerateRandom = [CKR.TOKEN_NOT_PRESENT, CKR.TOKEN_NOT_PRESENT];
  await t.rejects(
    b.random(8, signal()),
    { codeName: 'BACKEND_UNAVAILABLE', message: /token 'fake' went away \(CKR_TOKEN_NOT_PRESENT\)/ },
    'recovered once, not forever',
  );
  t.same(await b.random(8, signal()), Buffer.alloc(8, 0x5a), 'and the next request works again: no sticky error');
});

t.test('a token with no session left says so', async (t) => {
  setPin('1234');
  newToken({ sessionLimit: 0 });
  await t.rejects(backend(t).random(8, signal()), { codeName: 'BACKEND_UNAVAILABLE', message: /token 'fake' refuses to open a session \(CKR_SESSION_COUNT\)/ });
});

t.test("after a fork the library is initialized again and the parent's sessions are not touched", async (t) => {
  setPin('1234');
  newToken();
  const b = backend(t);
  await b.random(8, signal());
  const parentSessions = [...token.open];
  const pid = process.pid;
  Object.defineProperty(process, 'pid', { value: pid + 100000, configurable: true, writable: false, enumerable: true });
  t.teardown(() => Object.defineProperty(process, 'pid', { value: pid, configurable: true, writable: false, enumerable: true }));
  const inits = token.calls.C_Initialize;
  const closes = token.calls.C_CloseSession ?? 0;
  t.same(await b.random(8, signal()), Buffer.alloc(8, 0x5a));
  t.equal(token.calls.C_Initialize, inits + 1, 'C_Initialize again in the child');
  t.equal(token.calls.C_CloseSession ?? 0, closes, "the parent's session handles were not closed");
  t.ok(
    [...token.open].some((h) => !parentSessions.includes(h)),
    'a session of its own',
  );
});
