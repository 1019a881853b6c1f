/*
 * Grants: signatures the in-process KeyService has approved, run by the
 * calling thread itself.
 *
 * In the in-process mode the local backend's keys live in this process
 * already (in the KeyService worker). The trip to the worker for every
 * signature (two thread wake-ups and a JavaScript dispatch) costs more than
 * an ECDSA signature. After the worker has checked and run a SIGN for a local
 * key, it grants that exact operation: the same URI, algorithm, digest, MGF1
 * digest, salt length and input length, on the key it loaded, as long as
 * the key file is the one it read. Ed25519 signs the message itself, not a
 * digest: its grant covers messages of any length (policy sets none for a
 * local key), or a process signing messages of many lengths would trade one
 * grant for the next. The bridge then runs a matching request
 * on the caller's thread, writes the same audit line the worker would have
 * written, and answers. Anything else (another tuple, a changed or missing
 * key file, an error) goes to the worker as before; the worker revokes
 * grants when a key is deleted and clears them all when it stops, so a
 * closed KeyService signs nothing.
 *
 * The agent uses the same table for its peers: a grant made after a peer's
 * approved SIGN names that peer's uid and gid (what the KeyService's access
 * check read), and the agent's serving threads (serve.c) answer a matching
 * SIGN from a peer with both themselves, before any
 * JavaScript. For the agent's peers a grant may also name a key on a PKCS#11
 * token (module, slot, object handle): the serving thread then signs on the
 * token itself (pkcs11_sign.c). Those are never offered to in-process callers,
 * whose threads are the application's own and must not wait on a token
 * without the KeyService's timeout. And a peer's DESCRIBE, once the
 * KeyService has answered it from its cache of descriptions, is answered
 * again for that peer with the same reply and audit line (a process per
 * command describes its key each time); the agent revokes it with the key's
 * other grants, and grants it only from what the cache holds at that moment.
 * A description read from a key file holds while that file does, as a local
 * key's signature grant does.
 *
 * JS surface:
 *   grantSign({ uri, keyring, algorithm, digest, mgf1Digest?, saltLength?,
 *               dataLength, auditFd, uid?, gid?,
 *               key, file, ino, mtimeMs, size            a local key, or
 *               pkcs11: { module, slot, object, maxInside }  a token's })
 *                            Ed25519: no digest, dataLength 0;
 *                            uid and gid: the only peer it is for (both
 *                            absent: any caller of this process's bridge)
 *   grantDescribe({ uri, keyring, uid, gid, reply, auditFd,
 *                   file?, ino?, mtimeMs?, size? })
 *                            reply: the DESCRIBE reply frame (id replaced);
 *                            file...: the key file it was read from
 *   revokeGrants(uri?)       one URI's grants, or all of them
 *   revokeKeyringGrants(keyring)  every grant of one keyring
 *   answerGranted(frame, pid, uid, gid) -> reply frame | null
 *                            what serve.c does for an agent peer's SIGN
 *                            or DESCRIBE
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "addon.h"
#include "wire.h"

#define MAX_GRANTS 256

enum grant_kind { GRANT_LOCAL, GRANT_PKCS11, GRANT_DESCRIBE };

struct grant {
    enum grant_kind kind;
    char *uri;
    char *keyring;
    char algorithm[16]; /* "rsa-pkcs1", "rsa-pss", "ecdsa", "ed25519" */
    char digest[16];    /* "" for Ed25519 */
    char mgf1[16];      /* "" when the request carries none */
    int64_t salt;       /* -1 when the request carries none */
    size_t data_len;    /* the digest's length; 0 (any) for Ed25519 */
    int64_t uid, gid;   /* the peer it is for; -1: any caller in this process */
    /* GRANT_LOCAL */
    struct local_signer *signer;
    /* GRANT_LOCAL, and GRANT_DESCRIBE of a local key: the key file and its
     * identity when it was read; NULL for none */
    char *file;
    uint64_t ino;
    double mtime_ms;
    int64_t size;
    /* GRANT_PKCS11 */
    struct p11_module *module;
    struct p11_key p11;
    int max_inside; /* serving threads inside the module at once */
    /* GRANT_DESCRIBE: the KeyService's reply (id 0), from its cache */
    uint8_t *reply;
    size_t reply_len;
};

/* Who asks, for matching and for the audit line. */
struct caller {
    struct kb_peer who;
    int agent_peer; /* a serving thread for an agent peer, not the bridge */
};

/* Writer-preferring: a close() must not wait behind a stream of signatures. */
static pthread_rwlock_t lock =
    PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
static struct grant grants[MAX_GRANTS];
static size_t ngrants;
static atomic_size_t ngrants_hint; /* read without the lock to skip early */
static int audit_fd = -1;          /* the worker's audit file, or -1 */

static void grant_free(struct grant *g)
{
    free(g->uri);
    free(g->keyring);
    free(g->file);
    free(g->reply);
    local_signer_free(g->signer);
    memset(g, 0, sizeof(*g));
}

/* Drops grant i; the last one takes its place. */
static void remove_locked(size_t i)
{
    grant_free(&grants[i]);
    grants[i] = grants[--ngrants];
    memset(&grants[ngrants], 0, sizeof(grants[ngrants]));
    atomic_store(&ngrants_hint, ngrants);
}

/* Drops the grants of |uri|, or of |keyring|, or (both NULL) all of them. */
static void revoke_locked(const char *uri, const char *keyring)
{
    for (size_t i = 0; i < ngrants;) {
        const struct grant *g = &grants[i];
        if ((uri == NULL && keyring == NULL) ||
            (uri != NULL && strcmp(g->uri, uri) == 0) ||
            (keyring != NULL && strcmp(g->keyring, keyring) == 0))
            remove_locked(i);
        else
            i++;
    }
}

void grants_clear(void)
{
    pthread_rwlock_wrlock(&lock);
    revoke_locked(NULL, NULL);
    audit_fd = -1;
    pthread_rwlock_unlock(&lock);
}

/* ---- the caller's side ------------------------------------------------- */

static const struct kb_wire_field *field(const struct kb_wire_msg *m,
                                         uint16_t tag)
{
    for (size_t i = 0; i < m->nfields; i++)
        if (m->fields[i].tag == tag)
            return &m->fields[i];
    return NULL;
}

/* Whether string field |tag| equals |want| ("": the field is absent; an
 * empty field is not absent, as the KeyService refuses an empty digest). */
static int string_is(const struct kb_wire_msg *m, uint16_t tag,
                     const char *want)
{
    const struct kb_wire_field *f = field(m, tag);
    if (f == NULL)
        return want[0] == '\0';
    return want[0] != '\0' && strlen(want) == f->len &&
           memcmp(f->val, want, f->len) == 0;
}

/* Whether |g| is for |c|: an agent peer's access was decided on its uid and
 * gid (allow_gids), so a grant for one names both. */
static int for_caller(const struct grant *g, const struct caller *c)
{
    return g->uid < 0 || ((unsigned long)g->uid == c->who.uid &&
                          (unsigned long)g->gid == c->who.gid);
}

static int matches(const struct grant *g, const struct caller *c,
                   const struct kb_wire_msg *m,
                   const struct kb_wire_field *data)
{
    const struct kb_wire_field *salt = field(m, KB_TAG_SALT_LENGTH);
    return g->kind != GRANT_DESCRIBE && for_caller(g, c) &&
           (g->kind == GRANT_LOCAL || c->agent_peer) &&
           string_is(m, KB_TAG_URI, g->uri) &&
           string_is(m, KB_TAG_ALGORITHM, g->algorithm) &&
           string_is(m, KB_TAG_DIGEST, g->digest) &&
           string_is(m, KB_TAG_MGF1_DIGEST, g->mgf1) &&
           (salt == NULL ? g->salt == -1 : (int64_t)salt->u32 == g->salt) &&
           (g->data_len == 0 || data->len == g->data_len);
}

/* The key file is still the one the worker read (as its stamp reads it). */
static int file_unchanged(const struct grant *g)
{
    struct stat st;
    if (stat(g->file, &st) != 0)
        return 0;
    double mtime_ms =
        (double)st.st_mtim.tv_sec * 1e3 + (double)st.st_mtim.tv_nsec / 1e6;
    return (uint64_t)st.st_ino == g->ino && mtime_ms == g->mtime_ms &&
           (int64_t)st.st_size == g->size;
}

/* Appends |len| bytes of |s| as a JSON string at |out| (room for 6 bytes
 * per byte and the quotes); returns the end. */
static char *json_string(char *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    *out++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else if (c < 0x20) {
            memcpy(out, "\\u00", 4);
            out[4] = hex[c >> 4];
            out[5] = hex[c & 15];
            out += 6;
        } else {
            *out++ = (char)c;
        }
    }
    *out++ = '"';
    return out;
}

/* What an audit line names; the strings are the request's, which matched. */
struct audited {
    const char *op; /* "sign" or "describe" */
    const char *uri;
    size_t uri_len;
    char algorithm[16];
    char digest[16];
};

/* The worker's audit line (src-ts/audit.ts), written before the answer, in
 * one write. Formatted on the stack: this runs for every granted signature,
 * and a stdio stream per line was a few per cent of a serving thread. */
static void audit(int fd, const struct audited *a, const struct caller *c,
                  double ms)
{
    if (fd < 0)
        return;
    struct timespec now;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);

    char stack[1024];
    size_t size = 512 + 6 * a->uri_len; /* the rest is bounded and short */
    char *line = size <= sizeof(stack) ? stack : malloc(size);
    if (line == NULL)
        return;
    char *p = line, *end = line + size;
    p += snprintf(p, (size_t)(end - p),
                  "{\"time\":\"%s.%03ldZ\",\"pid\":%ld,\"uid\":%lu,\"uri\":",
                  when, now.tv_nsec / 1000000L, c->who.pid, c->who.uid);
    p = json_string(p, a->uri, a->uri_len);
    p += snprintf(p, (size_t)(end - p), ",\"op\":\"%s\"", a->op);
    if (a->algorithm[0] != '\0') /* none for a description */
        p += snprintf(p, (size_t)(end - p), ",\"alg\":\"%s\"", a->algorithm);
    if (a->digest[0] != '\0') /* none for Ed25519, as in audit.ts */
        p += snprintf(p, (size_t)(end - p), ",\"digest\":\"%s\"", a->digest);
    int tail = snprintf(p, (size_t)(end - p),
                        ",\"outcome\":\"ok\",\"ms\":%.6f}\n", ms);
    if (tail > 0 && tail < end - p) {
        p += tail;
        ssize_t n;
        do
            n = write(fd, line, (size_t)(p - line));
        while (n < 0 && errno == EINTR);
    }
    if (line != stack)
        free(line);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int reply_signature(struct kb_buf *out, uint32_t id,
                           const unsigned char *sig, size_t sig_len)
{
    kb_frame_begin(out, id, KB_MSG_SIGN | KB_WIRE_REPLY_BIT, KB_STATUS_OK);
    kb_frame_bytes(out, KB_TAG_RESULT, sig, sig_len);
    return kb_frame_end(out);
}

/* The padding local_crypto.c names for a grant's algorithm. */
static const char *padding_of(const char *algorithm)
{
    return strcmp(algorithm, "rsa-pkcs1") == 0 ? "pkcs1"
           : strcmp(algorithm, "rsa-pss") == 0 ? "pss"
                                               : "none";
}

/* A local key: signed under the read lock (in memory, microseconds). */
static int sign_local(const struct grant *g, const struct kb_wire_field *data,
                      unsigned char **sig, size_t *sig_len)
{
    char err[320];
    return file_unchanged(g) &&
           local_signer_sign(g->signer, data->val, data->len, sig, sig_len, err,
                             sizeof(err));
}

/* |frame| decoded, if it is a request of |type| and grants exist; NULL
 * otherwise (a frame the codec refuses is the KeyService's to report). */
static struct kb_wire_msg *decode_request(const uint8_t *frame, size_t len,
                                          uint16_t type)
{
    struct kb_wire_msg *m = NULL;
    char why[64];
    if (atomic_load(&ngrants_hint) == 0 || len < KB_WIRE_HEADER_LEN ||
        ((frame[8] << 8) | frame[9]) != type ||
        !kb_wire_decode(frame, len, &m, why, sizeof(why)))
        return NULL;
    return m;
}

/* Runs a granted SIGN: 1 with the encoded reply in |out|, 0 if no grant
 * covers it (or the key file changed, or the signature failed: the KeyService
 * then answers and reports). */
static int sign_granted(const uint8_t *frame, size_t len,
                        const struct caller *c, struct kb_buf *out)
{
    struct kb_wire_msg *m = decode_request(frame, len, KB_MSG_SIGN);
    if (m == NULL)
        return 0;
    const struct kb_wire_field *data = field(m, KB_TAG_DATA);
    const struct kb_wire_field *uri = field(m, KB_TAG_URI);
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    int signed_ok = 0, done = 0;
    double started = now_ms();
    struct audited a = {.op = "sign"};

    pthread_rwlock_rdlock(&lock);
    const struct grant *g = NULL;
    for (size_t i = 0; data != NULL && i < ngrants && g == NULL; i++)
        if (matches(&grants[i], c, m, data))
            g = &grants[i];
    if (g != NULL) {
        memcpy(a.algorithm, g->algorithm, sizeof(a.algorithm));
        memcpy(a.digest, g->digest, sizeof(a.digest));
    }
    if (g != NULL && g->kind == GRANT_LOCAL) {
        signed_ok = sign_local(g, data, &sig, &sig_len);
    } else if (g != NULL && p11_module_enter(g->module, g->max_inside)) {
        /* A token may take milliseconds: sign outside the lock, so that
         * grants and revocations never wait for it. What a revocation
         * finalizes waits for the threads inside (pkcs11Quiesce). */
        struct p11_module *module = g->module;
        struct p11_key key = g->p11;
        char mgf1[sizeof(g->mgf1)];
        int64_t salt = g->salt;
        memcpy(mgf1, g->mgf1, sizeof(mgf1));
        pthread_rwlock_unlock(&lock);
        signed_ok = p11_sign(module, &key, a.algorithm, a.digest, mgf1, salt,
                             data->val, data->len, &sig, &sig_len);
        p11_module_leave(module);
        /* again for the audit descriptor, which close() takes away */
        pthread_rwlock_rdlock(&lock);
    }
    if (signed_ok && uri != NULL && reply_signature(out, m->id, sig, sig_len)) {
        a.uri = (const char *)uri->val;
        a.uri_len = uri->len;
        audit(audit_fd, &a, c, now_ms() - started);
        done = 1;
    }
    pthread_rwlock_unlock(&lock);
    if (sig != NULL)
        OPENSSL_clear_free(sig, sig_len);
    kb_wire_msg_free(m);
    return done;
}

/* Answers a DESCRIBE that a grant covers for this agent peer: the reply the
 * KeyService gave it from its cache of descriptions, with the request's id,
 * after the same audit line. 1 with the reply in |out|. */
static int describe_granted(const uint8_t *frame, size_t len,
                            const struct caller *c, struct kb_buf *out)
{
    struct kb_wire_msg *m = decode_request(frame, len, KB_MSG_DESCRIBE);
    if (m == NULL)
        return 0;
    const struct kb_wire_field *uri = field(m, KB_TAG_URI);
    double started = now_ms();
    int done = 0;
    pthread_rwlock_rdlock(&lock);
    for (size_t i = 0; uri != NULL && i < ngrants && !done; i++) {
        const struct grant *g = &grants[i];
        if (g->kind != GRANT_DESCRIBE || !for_caller(g, c) ||
            !string_is(m, KB_TAG_URI, g->uri) ||
            (g->file != NULL && !file_unchanged(g)) ||
            (out->data = malloc(g->reply_len)) == NULL)
            continue;
        memcpy(out->data, g->reply, g->reply_len);
        out->len = out->cap = g->reply_len;
        kb_frame_set_id(out->data, m->id);
        struct audited a = {.op = "describe",
                            .uri = (const char *)uri->val,
                            .uri_len = uri->len};
        audit(audit_fd, &a, c, now_ms() - started);
        done = 1;
    }
    pthread_rwlock_unlock(&lock);
    kb_wire_msg_free(m);
    return done;
}

int grants_try(const struct kb_buf *req, struct kb_wire_msg **reply)
{
    if (atomic_load(&ngrants_hint) == 0)
        return 0; /* nor two system calls for who is asking */
    struct caller c = {
        {(long)getpid(), (unsigned long)getuid(), (unsigned long)getgid()}, 0};
    struct kb_buf out = {0};
    char why[64];
    int done = sign_granted(req->data, req->len, &c, &out) &&
               kb_wire_decode(out.data, out.len, reply, why, sizeof(why));
    kb_buf_free(&out);
    return done;
}

int grants_answer(const uint8_t *frame, size_t len, const struct kb_peer *peer,
                  struct kb_buf *out)
{
    struct caller c = {*peer, 1};
    return sign_granted(frame, len, &c, out) ||
           describe_granted(frame, len, &c, out);
}

/* answerGranted(frame, pid, uid, gid) -> reply | null: serve.c's question,
 * asked from JavaScript (tests). */
static napi_value answer_granted_js(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4], result;
    void *frame = NULL;
    size_t len = 0;
    int64_t pid = 0, uid = 0, gid = 0;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 4 ||
        napi_get_buffer_info(env, argv[0], &frame, &len) != napi_ok ||
        napi_get_value_int64(env, argv[1], &pid) != napi_ok ||
        napi_get_value_int64(env, argv[2], &uid) != napi_ok || uid < 0 ||
        napi_get_value_int64(env, argv[3], &gid) != napi_ok || gid < 0)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "answerGranted(frame, pid, uid, gid)");
    struct kb_peer peer = {(long)pid, (unsigned long)uid, (unsigned long)gid};
    struct kb_buf out = {0};
    if (!grants_answer(frame, len, &peer, &out) ||
        napi_create_buffer_copy(env, out.len, out.data, NULL, &result) !=
            napi_ok)
        napi_get_null(env, &result);
    kb_buf_free(&out);
    return result;
}

/* ---- the KeyService's side -------------------------------------------------
 */

static int get_string(napi_env env, napi_value obj, const char *name, char *buf,
                      size_t size, int required)
{
    napi_value v;
    napi_valuetype t;
    size_t len;
    if (napi_get_named_property(env, obj, name, &v) != napi_ok ||
        napi_typeof(env, v, &t) != napi_ok)
        return 0;
    if (t == napi_undefined || t == napi_null) {
        buf[0] = '\0';
        return !required;
    }
    return napi_get_value_string_utf8(env, v, buf, size, &len) == napi_ok &&
           len + 1 < size;
}

static int get_number(napi_env env, napi_value obj, const char *name,
                      double *out, int required)
{
    napi_value v;
    napi_valuetype t;
    if (napi_get_named_property(env, obj, name, &v) != napi_ok ||
        napi_typeof(env, v, &t) != napi_ok)
        return 0;
    if (t == napi_undefined) {
        *out = -1;
        return !required;
    }
    return napi_get_value_double(env, v, out) == napi_ok;
}

/* A key file's identity as it was read ({ file, ino, mtimeMs, size }), into
 * |file| and |g|; with |required| 0, also 1 when all four are absent (|file|
 * left ""). */
static int get_file_identity(napi_env env, napi_value obj, struct grant *g,
                             char *file, size_t file_size, int required)
{
    double ino, size;
    if (!get_string(env, obj, "file", file, file_size, required) ||
        !get_number(env, obj, "ino", &ino, required) ||
        !get_number(env, obj, "mtimeMs", &g->mtime_ms, required) ||
        !get_number(env, obj, "size", &size, required))
        return 0;
    if (file[0] == '\0') /* absent: then so must the rest be */
        return ino < 0 && g->mtime_ms < 0 && size < 0;
    if (ino < 0 || size < 0)
        return 0;
    g->ino = (uint64_t)ino;
    g->size = (int64_t)size;
    return 1;
}

/* The local key of a grant: the loaded key and its file's identity. */
static int get_local(napi_env env, napi_value obj, struct grant *g, char *file,
                     size_t file_size, EVP_PKEY **pkey)
{
    napi_value v;
    if (!get_file_identity(env, obj, g, file, file_size, 1) ||
        napi_get_named_property(env, obj, "key", &v) != napi_ok ||
        napi_get_value_external(env, v, (void **)pkey) != napi_ok ||
        *pkey == NULL)
        return 0;
    g->kind = GRANT_LOCAL;
    return 1;
}

/* The token key of a grant: { module, slot, object, maxInside }. */
static int get_pkcs11(napi_env env, napi_value obj, struct grant *g, char *err,
                      size_t errlen)
{
    char module[4096];
    double slot, object, max_inside;
    if (!get_string(env, obj, "module", module, sizeof(module), 1) ||
        !get_number(env, obj, "slot", &slot, 1) ||
        !get_number(env, obj, "object", &object, 1) ||
        !get_number(env, obj, "maxInside", &max_inside, 1) || slot < 0 ||
        object < 0 || max_inside < 1)
        return 0;
    g->kind = GRANT_PKCS11;
    g->p11.slot = (unsigned long)slot;
    g->p11.object = (unsigned long)object;
    g->max_inside = (int)max_inside;
    g->module = p11_module_find(module, err, errlen);
    return g->module != NULL;
}

/* Whether |o| is the grant |g| would be (the same operation for the same
 * peer): a key read again replaces it. */
static int same_grant(const struct grant *o, const struct grant *g)
{
    return (o->kind == GRANT_DESCRIBE) == (g->kind == GRANT_DESCRIBE) &&
           strcmp(o->uri, g->uri) == 0 &&
           strcmp(o->algorithm, g->algorithm) == 0 &&
           strcmp(o->digest, g->digest) == 0 && strcmp(o->mgf1, g->mgf1) == 0 &&
           o->salt == g->salt && o->uid == g->uid && o->gid == g->gid;
}

/* Puts |g| in the table (which owns it from here, or it is freed: the table
 * is full, or a copy it needs could not be made), in place of the grant it
 * replaces; |file_name|: the key file it holds while unchanged (always for a
 * local key), or NULL; |fd|: where granted operations write their audit
 * line. */
static void store(struct grant *g, const char *uri, const char *keyring,
                  const char *file_name, int fd)
{
    g->uri = strdup(uri);
    g->keyring = strdup(keyring);
    if (file_name != NULL)
        g->file = strdup(file_name);
    int whole = g->uri != NULL && g->keyring != NULL &&
                (file_name == NULL || g->file != NULL) &&
                (g->kind != GRANT_DESCRIBE || g->reply != NULL);
    pthread_rwlock_wrlock(&lock);
    audit_fd = fd;
    for (size_t i = 0; whole && i < ngrants; i++)
        if (same_grant(&grants[i], g)) {
            remove_locked(i);
            break;
        }
    if (whole && ngrants < MAX_GRANTS)
        grants[ngrants++] = *g;
    else
        grant_free(g);
    atomic_store(&ngrants_hint, ngrants);
    pthread_rwlock_unlock(&lock);
}

static napi_value grant_sign(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], p11;
    napi_valuetype p11_type = napi_undefined;
    struct grant g = {0};
    EVP_PKEY *pkey = NULL;
    char uri[KB_WIRE_MAX_STRING + 1], keyring[256], file[4096] = "";
    char err[256] = "";
    double salt, data_len, fd, uid, gid;

    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 || !get_string(env, argv[0], "uri", uri, sizeof(uri), 1) ||
        !get_string(env, argv[0], "keyring", keyring, sizeof(keyring), 1) ||
        !get_string(env, argv[0], "algorithm", g.algorithm, sizeof(g.algorithm),
                    1) ||
        !get_string(env, argv[0], "digest", g.digest, sizeof(g.digest), 0) ||
        !get_string(env, argv[0], "mgf1Digest", g.mgf1, sizeof(g.mgf1), 0) ||
        !get_number(env, argv[0], "saltLength", &salt, 0) ||
        !get_number(env, argv[0], "dataLength", &data_len, 1) ||
        !get_number(env, argv[0], "auditFd", &fd, 1) ||
        !get_number(env, argv[0], "uid", &uid, 0) ||
        !get_number(env, argv[0], "gid", &gid, 0) || data_len < 0 ||
        napi_get_named_property(env, argv[0], "pkcs11", &p11) != napi_ok ||
        napi_typeof(env, p11, &p11_type) != napi_ok ||
        /* Ed25519 signs the message itself, of any length (0); everything
         * else a digest of its length */
        (g.digest[0] == '\0') != (strcmp(g.algorithm, "ed25519") == 0) ||
        (g.digest[0] == '\0') != (data_len == 0))
        return addon_throw(env, "ERR_INVALID_ARG",
                           "grantSign({ uri, keyring, algorithm, digest "
                           "(none for ed25519), dataLength (0 for ed25519), "
                           "auditFd, uid? and gid?, "
                           "key, file, ino, mtimeMs, size | pkcs11 })");
    if ((uid < 0) != (gid < 0)) /* access may rest on either */
        return addon_throw(env, "ERR_INVALID_ARG",
                           "a grant for an agent peer names its uid and gid");
    if (p11_type == napi_object) {
        if (uid < 0)
            return addon_throw(env, "ERR_INVALID_ARG",
                               "a PKCS#11 grant is for one agent peer: uid "
                               "and gid");
        if (!get_pkcs11(env, p11, &g, err, sizeof(err)))
            return addon_throw(env, "ERR_INVALID_ARG",
                               err[0] != '\0'
                                   ? err
                                   : "pkcs11: { module, slot, object, "
                                     "maxInside }");
    } else if (!get_local(env, argv[0], &g, file, sizeof(file), &pkey)) {
        return addon_throw(env, "ERR_INVALID_ARG",
                           "a local grant needs key, file, ino, mtimeMs, size");
    }
    g.salt = (int64_t)salt;
    g.data_len = (size_t)data_len;
    g.uid = (int64_t)uid; /* absent: -1, any caller */
    g.gid = (int64_t)gid;
    if (g.kind == GRANT_LOCAL &&
        (g.signer = local_signer_new(pkey, padding_of(g.algorithm), g.digest,
                                     g.mgf1, (int)g.salt, err, sizeof(err))) ==
            NULL)
        return addon_throw(env, "ERR_INVALID_ARG", err);

    store(&g, uri, keyring, g.kind == GRANT_LOCAL ? file : NULL, (int)fd);
    return NULL;
}

/* grantDescribe({ uri, keyring, uid, gid, reply, auditFd, file?, ino?,
 * mtimeMs?, size? }) */
static napi_value grant_describe(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], reply;
    struct grant g = {.kind = GRANT_DESCRIBE, .salt = -1};
    char uri[KB_WIRE_MAX_STRING + 1], keyring[256], file[4096] = "";
    double uid, gid, fd;
    void *bytes = NULL;
    size_t n = 0;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 || !get_string(env, argv[0], "uri", uri, sizeof(uri), 1) ||
        !get_string(env, argv[0], "keyring", keyring, sizeof(keyring), 1) ||
        !get_number(env, argv[0], "uid", &uid, 1) || uid < 0 ||
        !get_number(env, argv[0], "gid", &gid, 1) || gid < 0 ||
        !get_number(env, argv[0], "auditFd", &fd, 1) ||
        !get_file_identity(env, argv[0], &g, file, sizeof(file), 0) ||
        napi_get_named_property(env, argv[0], "reply", &reply) != napi_ok ||
        napi_get_buffer_info(env, reply, &bytes, &n) != napi_ok ||
        n < KB_WIRE_HEADER_LEN ||
        ((((uint8_t *)bytes)[8] << 8) | ((uint8_t *)bytes)[9]) !=
            (KB_MSG_DESCRIBE | KB_WIRE_REPLY_BIT))
        return addon_throw(env, "ERR_INVALID_ARG",
                           "grantDescribe({ uri, keyring, uid, gid, reply (a "
                           "DESCRIBE reply frame), auditFd, and file, ino, "
                           "mtimeMs, size together or not at all })");
    g.uid = (int64_t)uid;
    g.gid = (int64_t)gid;
    if ((g.reply = malloc(n)) != NULL) {
        memcpy(g.reply, bytes, n);
        g.reply_len = n;
    }
    store(&g, uri, keyring, file[0] != '\0' ? file : NULL, (int)fd);
    return NULL;
}

static napi_value revoke_grants(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    char uri[KB_WIRE_MAX_STRING + 1];
    napi_valuetype t = napi_undefined;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (argc >= 1)
        napi_typeof(env, argv[0], &t);
    if (t == napi_undefined) {
        pthread_rwlock_wrlock(&lock);
        revoke_locked(NULL, NULL);
        pthread_rwlock_unlock(&lock);
        return NULL;
    }
    size_t len;
    if (napi_get_value_string_utf8(env, argv[0], uri, sizeof(uri), &len) !=
        napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG", "revokeGrants(uri?)");
    pthread_rwlock_wrlock(&lock);
    revoke_locked(uri, NULL);
    pthread_rwlock_unlock(&lock);
    return NULL;
}

static napi_value revoke_keyring_grants(napi_env env, napi_callback_info info)
{
    size_t argc = 1, len;
    napi_value argv[1];
    char keyring[256];
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 ||
        napi_get_value_string_utf8(env, argv[0], keyring, sizeof(keyring),
                                   &len) != napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "revokeKeyringGrants(keyring)");
    pthread_rwlock_wrlock(&lock);
    revoke_locked(NULL, keyring);
    pthread_rwlock_unlock(&lock);
    return NULL;
}

napi_status grants_register(napi_env env, napi_value exports)
{
    const napi_property_descriptor props[] = {
        {"grantSign", NULL, grant_sign, NULL, NULL, NULL, napi_default, NULL},
        {"grantDescribe", NULL, grant_describe, NULL, NULL, NULL, napi_default,
         NULL},
        {"revokeGrants", NULL, revoke_grants, NULL, NULL, NULL, napi_default,
         NULL},
        {"revokeKeyringGrants", NULL, revoke_keyring_grants, NULL, NULL, NULL,
         napi_default, NULL},
        {"answerGranted", NULL, answer_granted_js, NULL, NULL, NULL,
         napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
