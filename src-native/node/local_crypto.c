/*
 * Key operations over a digest computed by the caller: private-key ones for
 * the local backend of the KeyService, public-key ones (verify, encrypt) for
 * the KeyService's VERIFY and ENCRYPT with any backend's public key.
 * node:crypto always hashes its input (it has no "sign this digest" for ECDSA
 * or RSA-PSS) and Node 20 refuses PKCS#1 v1.5 decryption, so the KeyService
 * hands decrypted keys to these functions. They run on the libuv thread pool so
 * one agent uses every core; the *Now forms run on the calling thread instead,
 * for callers that must not wait for the pool (the in-process KeyService
 * worker: threads blocked on it may hold every pool thread) or for whom the
 * trip to the pool and back costs more than it gains (ECDSA always; RSA while
 * no other request waits: src-ts/backends/local.ts).
 *
 * JS surface:
 *   loadPrivateKey(pkcs8: Buffer) -> handle
 *   sign(handle, { padding, digest, mgf1Digest, saltLength }, data) ->
 * Promise<Buffer> decrypt(handle, { padding, digest, mgf1Digest, label }, data)
 * -> Promise<Buffer> signNow(...), decryptNow(...): the same, returning the
 * Buffer (or throwing) loadPublicKey(spki: Buffer) -> handle verify(handle, {
 * padding, digest, mgf1Digest, saltLength }, data, sig) -> Promise<boolean>
 *   encrypt(handle, { padding, digest, mgf1Digest, label }, data) ->
 * Promise<Buffer> verifyNow(...), encryptNow(...): the same on the calling
 * thread padding: "pkcs1" | "pss" | "oaep" | "none" (for EC and Ed25519 keys).
 * verify of an Ed25519 key takes the whole message (no digest). A signature
 * that does not verify, malformed ones included, is false, not an error.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "addon.h"

enum op_kind { OP_SIGN, OP_DECRYPT, OP_VERIFY, OP_ENCRYPT };
enum padding { PAD_NONE, PAD_PKCS1, PAD_PSS, PAD_OAEP };

struct job {
    napi_async_work work;
    napi_deferred deferred;
    enum op_kind kind;
    EVP_PKEY *pkey; /* one reference held for the job's life */
    enum padding padding;
    char digest[16];
    char mgf1[16];
    int salt_length;
    unsigned char *label;
    size_t label_len;
    unsigned char *in;
    size_t in_len;
    unsigned char *out;
    size_t out_len;
    unsigned char *sig; /* OP_VERIFY: the signature to check */
    size_t sig_len;
    int verified; /* OP_VERIFY: 1 if the signature is valid */
    char error[320];
};

static const char *const op_names[] = {"sign", "decrypt", "verify", "encrypt"};

static const struct {
    const char *ours;
    const char *openssl;
} digest_names[] = {
    {"sha1", "SHA1"},       {"sha224", "SHA2-224"}, {"sha256", "SHA2-256"},
    {"sha384", "SHA2-384"}, {"sha512", "SHA2-512"},
};

static const char *openssl_digest(const char *ours)
{
    for (size_t i = 0; i < sizeof(digest_names) / sizeof(digest_names[0]); i++)
        if (strcmp(digest_names[i].ours, ours) == 0)
            return digest_names[i].openssl;
    return NULL;
}

napi_value addon_throw(napi_env env, const char *code, const char *message)
{
    napi_throw_error(env, code, message);
    return NULL;
}

static void pkey_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    EVP_PKEY_free((EVP_PKEY *)data);
}

static napi_value load_private_key(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    void *der = NULL;
    size_t der_len = 0;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 ||
        napi_get_buffer_info(env, argv[0], &der, &der_len) != napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "loadPrivateKey: expected a PKCS#8 DER buffer");

    const unsigned char *p = der;
    EVP_PKEY *pkey = d2i_AutoPrivateKey(NULL, &p, (long)der_len);
    if (pkey == NULL) {
        ERR_clear_error();
        return addon_throw(env, "ERR_KEY_DECODE",
                           "loadPrivateKey: not a PKCS#8 private key");
    }
    napi_value handle;
    if (napi_create_external(env, pkey, pkey_finalize, NULL, &handle) !=
        napi_ok) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return handle;
}

static napi_value load_public_key(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    void *der = NULL;
    size_t der_len = 0;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 ||
        napi_get_buffer_info(env, argv[0], &der, &der_len) != napi_ok)
        return addon_throw(
            env, "ERR_INVALID_ARG",
            "loadPublicKey: expected a SubjectPublicKeyInfo DER buffer");

    const unsigned char *p = der;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)der_len);
    if (pkey == NULL || p != (const unsigned char *)der + der_len) {
        EVP_PKEY_free(pkey);
        ERR_clear_error();
        return addon_throw(env, "ERR_KEY_DECODE",
                           "loadPublicKey: not a SubjectPublicKeyInfo");
    }
    napi_value handle;
    if (napi_create_external(env, pkey, pkey_finalize, NULL, &handle) !=
        napi_ok) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return handle;
}

/* Reads an optional string property into buf; returns 0 if absent, 1 if read,
 * -1 on error. */
static int get_string_prop(napi_env env, napi_value obj, const char *name,
                           char *buf, size_t size)
{
    bool has = false;
    napi_value v;
    napi_valuetype t;
    size_t len;
    if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has)
        return 0;
    if (napi_get_named_property(env, obj, name, &v) != napi_ok ||
        napi_typeof(env, v, &t) != napi_ok)
        return -1;
    if (t == napi_undefined || t == napi_null)
        return 0;
    if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok ||
        len + 1 >= size)
        return -1;
    return 1;
}

static int parse_padding(const char *s, enum padding *out)
{
    static const struct {
        const char *name;
        enum padding value;
    } table[] = {{"none", PAD_NONE},
                 {"pkcs1", PAD_PKCS1},
                 {"pss", PAD_PSS},
                 {"oaep", PAD_OAEP}};
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(table[i].name, s) == 0) {
            *out = table[i].value;
            return 1;
        }
    return 0;
}

static void job_free(struct job *job)
{
    EVP_PKEY_free(job->pkey);
    OPENSSL_clear_free(job->in, job->in_len);
    OPENSSL_clear_free(job->out, job->out_len);
    OPENSSL_free(job->sig);
    OPENSSL_free(job->label);
    free(job);
}

static void set_error(struct job *job, const char *what)
{
    unsigned long e = ERR_get_error();
    if (e != 0) {
        char reason[200];
        ERR_error_string_n(e, reason, sizeof(reason));
        snprintf(job->error, sizeof(job->error), "%s: %s", what, reason);
    } else {
        snprintf(job->error, sizeof(job->error), "%s", what);
    }
    ERR_clear_error();
}

static int set_rsa_params(struct job *job, EVP_PKEY_CTX *ctx)
{
    EVP_MD *md = NULL, *mgf1 = NULL;
    int ok = 0;
    if (job->digest[0] != '\0' &&
        (md = EVP_MD_fetch(NULL, openssl_digest(job->digest), NULL)) == NULL)
        goto done;
    if (job->mgf1[0] != '\0' &&
        (mgf1 = EVP_MD_fetch(NULL, openssl_digest(job->mgf1), NULL)) == NULL)
        goto done;

    switch (job->padding) {
    case PAD_NONE:
        /* EC keys: the digest only tells OpenSSL the input length to expect. */
        ok = md == NULL || EVP_PKEY_CTX_set_signature_md(ctx, md) > 0;
        break;
    case PAD_PKCS1:
        ok =
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0 &&
            (md == NULL || job->kind == OP_DECRYPT || job->kind == OP_ENCRYPT ||
             EVP_PKEY_CTX_set_signature_md(ctx, md) > 0);
        break;
    case PAD_PSS:
        ok = md != NULL &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_signature_md(ctx, md) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf1 != NULL ? mgf1 : md) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, job->salt_length) > 0;
        break;
    case PAD_OAEP:
        ok = md != NULL &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf1 != NULL ? mgf1 : md) > 0;
        if (ok && job->label_len > 0) {
            /* set0 takes ownership of the label on success */
            ok = EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, job->label,
                                                  (int)job->label_len) > 0;
            if (ok)
                job->label = NULL, job->label_len = 0;
        }
        break;
    }
done:
    EVP_MD_free(md);
    EVP_MD_free(mgf1);
    return ok;
}

/* An initialized context for a job's operation. Ed25519 has neither
 * EVP_PKEY_sign nor EVP_PKEY_verify: it signs and verifies the message
 * one-shot through an EVP_MD_CTX. Everything else goes through an
 * EVP_PKEY_CTX with its padding and digests set. */
struct prepared {
    EVP_MD_CTX *md;    /* Ed25519 */
    EVP_PKEY_CTX *ctx; /* the others */
};

static void prepared_free(struct prepared *p)
{
    EVP_MD_CTX_free(p->md); /* owns its EVP_PKEY_CTX */
    EVP_PKEY_CTX_free(p->ctx);
    p->md = NULL;
    p->ctx = NULL;
}

static int op_init(struct job *job, EVP_PKEY_CTX *ctx)
{
    switch (job->kind) {
    case OP_SIGN:
        return EVP_PKEY_sign_init(ctx);
    case OP_DECRYPT:
        return EVP_PKEY_decrypt_init(ctx);
    case OP_VERIFY:
        return EVP_PKEY_verify_init(ctx);
    case OP_ENCRYPT:
        return EVP_PKEY_encrypt_init(ctx);
    }
    return 0;
}

/* 1 with |p| ready, or 0 with job->error set. */
static int prepare(struct job *job, struct prepared *p)
{
    char what[64];
    snprintf(what, sizeof(what), "%s init failed", op_names[job->kind]);
    if (EVP_PKEY_get_id(job->pkey) == EVP_PKEY_ED25519 &&
        (job->kind == OP_VERIFY || job->kind == OP_SIGN)) {
        p->md = EVP_MD_CTX_new();
        if (p->md == NULL ||
            (job->kind == OP_SIGN
                 ? EVP_DigestSignInit_ex(p->md, NULL, NULL, NULL, NULL,
                                         job->pkey, NULL)
                 : EVP_DigestVerifyInit_ex(p->md, NULL, NULL, NULL, NULL,
                                           job->pkey, NULL)) <= 0) {
            set_error(job, what);
            prepared_free(p);
            return 0;
        }
        return 1;
    }
    p->ctx = EVP_PKEY_CTX_new_from_pkey(NULL, job->pkey, NULL);
    if (p->ctx == NULL || op_init(job, p->ctx) <= 0) {
        set_error(job, what);
    } else if (!set_rsa_params(job, p->ctx)) {
        set_error(job, "parameters not accepted");
    } else {
        return 1;
    }
    prepared_free(p);
    return 0;
}

/* sign, decrypt or encrypt: |out| NULL asks for the output size */
static int op_run(struct job *job, const struct prepared *p, unsigned char *out,
                  size_t *len)
{
    switch (job->kind) {
    case OP_SIGN:
        return p->md != NULL
                   ? EVP_DigestSign(p->md, out, len, job->in, job->in_len)
                   : EVP_PKEY_sign(p->ctx, out, len, job->in, job->in_len);
    case OP_DECRYPT:
        return EVP_PKEY_decrypt(p->ctx, out, len, job->in, job->in_len);
    case OP_ENCRYPT:
        return EVP_PKEY_encrypt(p->ctx, out, len, job->in, job->in_len);
    case OP_VERIFY:
        break;
    }
    return 0;
}

/* Runs the job's operation on |p|: job->out or job->verified, or 0 with
 * job->error set. */
static int run(struct job *job, const struct prepared *p)
{
    if (job->kind == OP_VERIFY) {
        /* 0 or less: a bad or malformed signature; either way it does not
         * verify */
        job->verified =
            (p->md != NULL ? EVP_DigestVerify(p->md, job->sig, job->sig_len,
                                              job->in, job->in_len)
                           : EVP_PKEY_verify(p->ctx, job->sig, job->sig_len,
                                             job->in, job->in_len)) == 1;
        return 1;
    }
    char what[64];
    size_t len = 0;
    snprintf(what, sizeof(what), "%s failed", op_names[job->kind]);
    if (op_run(job, p, NULL, &len) <= 0) {
        set_error(job, what);
        return 0;
    }
    job->out = OPENSSL_malloc(len > 0 ? len : 1);
    if (job->out == NULL) {
        set_error(job, "out of memory");
        return 0;
    }
    job->out_len = len;
    if (op_run(job, p, job->out, &len) <= 0) {
        set_error(job, what);
        return 0;
    }
    job->out_len = len;
    return 1;
}

static void execute(napi_env env, void *data)
{
    (void)env;
    struct job *job = data;
    struct prepared p = {0};
    if (prepare(job, &p))
        run(job, &p);
    prepared_free(&p);
    ERR_clear_error();
}

/* ---- prepared signers (grants.c) ------------------------------------------
 * A grant repeats one signature shape with one key. Preparing a context
 * (OpenSSL fetches the signature, its keymgmt and the digest by name, under
 * locks) cost about 3 us of a 45 us P-256 signature through the agent, so a
 * signer keeps the contexts its callers are done with and signs on them:
 * OpenSSL 3.0 allows EVP_PKEY_sign, and a one-shot EVP_DigestSign, to be
 * repeated on an initialized context. Should an OpenSSL refuse a second use
 * (later versions may mark a one-shot context finished), the signature is
 * made on a fresh context and the signer stops keeping them. */
#define SIGNER_SPARE_MAX 16

struct local_signer {
    struct job shape; /* the key, padding and digests; no data */
    pthread_mutex_t lock;
    struct prepared spare[SIGNER_SPARE_MAX];
    size_t nspare;
    int keep; /* contexts can be reused */
};

struct local_signer *local_signer_new(EVP_PKEY *pkey, const char *padding,
                                      const char *digest, const char *mgf1,
                                      int salt_length, char *err, size_t errlen)
{
    struct local_signer *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->shape.kind = OP_SIGN;
    s->shape.salt_length = salt_length;
    if (!parse_padding(padding, &s->shape.padding) ||
        (digest[0] != '\0' && openssl_digest(digest) == NULL) ||
        (mgf1[0] != '\0' && openssl_digest(mgf1) == NULL) ||
        strlen(digest) >= sizeof(s->shape.digest) ||
        strlen(mgf1) >= sizeof(s->shape.mgf1)) {
        snprintf(err, errlen, "unknown padding or digest");
        free(s);
        return NULL;
    }
    strcpy(s->shape.digest, digest);
    strcpy(s->shape.mgf1, mgf1);
    if (!EVP_PKEY_up_ref(pkey)) {
        snprintf(err, errlen, "out of memory");
        free(s);
        return NULL;
    }
    s->shape.pkey = pkey;
    s->keep = 1;
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

void local_signer_free(struct local_signer *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->nspare; i++)
        prepared_free(&s->spare[i]);
    EVP_PKEY_free(s->shape.pkey);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* A spare context, or 0 if none is kept. */
static int take_spare(struct local_signer *s, struct prepared *p)
{
    int found = 0;
    pthread_mutex_lock(&s->lock);
    if (s->nspare > 0) {
        *p = s->spare[--s->nspare];
        found = 1;
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

static void give_back(struct local_signer *s, struct prepared *p)
{
    pthread_mutex_lock(&s->lock);
    if (s->keep && s->nspare < SIGNER_SPARE_MAX) {
        s->spare[s->nspare++] = *p;
        p->md = NULL;
        p->ctx = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    prepared_free(p);
}

/* Stops keeping contexts: this OpenSSL does not sign twice on one. */
static void stop_keeping(struct local_signer *s)
{
    pthread_mutex_lock(&s->lock);
    s->keep = 0;
    for (size_t i = 0; i < s->nspare; i++)
        prepared_free(&s->spare[i]);
    s->nspare = 0;
    pthread_mutex_unlock(&s->lock);
}

int local_signer_sign(struct local_signer *s, const unsigned char *in,
                      size_t in_len, unsigned char **out, size_t *out_len,
                      char *err, size_t errlen)
{
    struct job job = s->shape;
    struct prepared p = {0};
    job.in = (unsigned char *)in; /* read only; not freed here */
    job.in_len = in_len;
    *out = NULL;
    *out_len = 0;

    int reused = take_spare(s, &p);
    int ok = (reused || prepare(&job, &p)) && run(&job, &p);
    if (!ok && reused) {
        /* a context that would not sign twice, or a key that no longer
         * signs: a fresh context tells which */
        prepared_free(&p);
        OPENSSL_clear_free(job.out, job.out_len);
        job.out = NULL;
        job.out_len = 0;
        job.error[0] = '\0';
        ok = prepare(&job, &p) && run(&job, &p);
        if (ok)
            stop_keeping(s);
    }
    if (ok)
        give_back(s, &p);
    else
        prepared_free(&p);
    ERR_clear_error();
    if (!ok) {
        snprintf(err, errlen, "%s", job.error);
        OPENSSL_clear_free(job.out, job.out_len);
        return 0;
    }
    *out = job.out;
    *out_len = job.out_len;
    return 1;
}

/* The job's result: a Buffer, or for OP_VERIFY a boolean. */
static napi_status result_value(napi_env env, struct job *job,
                                napi_value *value)
{
    if (job->kind == OP_VERIFY)
        return napi_get_boolean(env, job->verified != 0, value);
    return napi_create_buffer_copy(env, job->out_len, job->out, NULL, value);
}

static void complete(napi_env env, napi_status status, void *data)
{
    struct job *job = data;
    napi_value value;
    if (status == napi_ok && job->error[0] == '\0' &&
        result_value(env, job, &value) == napi_ok) {
        napi_resolve_deferred(env, job->deferred, value);
    } else {
        napi_value msg, err, code;
        const char *text =
            job->error[0] != '\0' ? job->error : "operation was cancelled";
        napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
        napi_create_string_utf8(env, "ERR_KEY_OPERATION", NAPI_AUTO_LENGTH,
                                &code);
        napi_create_error(env, code, msg, &err);
        napi_reject_deferred(env, job->deferred, err);
    }
    napi_delete_async_work(env, job->work);
    job_free(job);
}

static unsigned char *copy_bytes(const void *src, size_t len)
{
    unsigned char *p = OPENSSL_malloc(len > 0 ? len : 1);
    if (p != NULL && len > 0)
        memcpy(p, src, len);
    return p;
}

static napi_value start(napi_env env, napi_callback_info info,
                        enum op_kind kind, int now)
{
    size_t argc = 4;
    napi_value argv[4];
    EVP_PKEY *pkey = NULL;
    void *in = NULL, *sig = NULL;
    size_t in_len = 0, sig_len = 0;
    char padding[16] = "";
    char usage[64];

    snprintf(usage, sizeof(usage), "%s(handle, options, data%s)",
             op_names[kind], kind == OP_VERIFY ? ", signature" : "");
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < (kind == OP_VERIFY ? 4u : 3u) ||
        napi_get_value_external(env, argv[0], (void **)&pkey) != napi_ok ||
        pkey == NULL ||
        napi_get_buffer_info(env, argv[2], &in, &in_len) != napi_ok ||
        (kind == OP_VERIFY &&
         napi_get_buffer_info(env, argv[3], &sig, &sig_len) != napi_ok))
        return addon_throw(env, "ERR_INVALID_ARG", usage);

    struct job *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return addon_throw(env, "ERR_NO_MEMORY", "out of memory");
    job->kind = kind;
    /* signing defaults to a digest-long salt; verifying recovers any */
    job->salt_length =
        kind == OP_VERIFY ? RSA_PSS_SALTLEN_AUTO : RSA_PSS_SALTLEN_DIGEST;
    if (get_string_prop(env, argv[1], "padding", padding, sizeof(padding)) !=
            1 ||
        !parse_padding(padding, &job->padding) ||
        get_string_prop(env, argv[1], "digest", job->digest,
                        sizeof(job->digest)) < 0 ||
        get_string_prop(env, argv[1], "mgf1Digest", job->mgf1,
                        sizeof(job->mgf1)) < 0 ||
        (job->digest[0] != '\0' && openssl_digest(job->digest) == NULL) ||
        (job->mgf1[0] != '\0' && openssl_digest(job->mgf1) == NULL)) {
        free(job);
        return addon_throw(env, "ERR_INVALID_ARG",
                           "options: unknown padding or digest");
    }
    napi_value v;
    bool has = false;
    if (napi_has_named_property(env, argv[1], "saltLength", &has) == napi_ok &&
        has &&
        napi_get_named_property(env, argv[1], "saltLength", &v) == napi_ok)
        napi_get_value_int32(env, v, &job->salt_length);
    if (napi_has_named_property(env, argv[1], "label", &has) == napi_ok &&
        has && napi_get_named_property(env, argv[1], "label", &v) == napi_ok) {
        void *label = NULL;
        bool is_buffer = false;
        napi_is_buffer(env, v, &is_buffer);
        if (is_buffer &&
            napi_get_buffer_info(env, v, &label, &job->label_len) == napi_ok &&
            job->label_len > 0)
            job->label = copy_bytes(label, job->label_len);
    }
    job->in = copy_bytes(in, in_len);
    job->in_len = in_len;
    if (kind == OP_VERIFY) {
        job->sig = copy_bytes(sig, sig_len);
        job->sig_len = sig_len;
    }
    if (job->in == NULL || (kind == OP_VERIFY && job->sig == NULL) ||
        (job->label_len > 0 && job->label == NULL) || !EVP_PKEY_up_ref(pkey)) {
        job_free(job);
        return addon_throw(env, "ERR_NO_MEMORY", "out of memory");
    }
    job->pkey = pkey;

    if (now) {
        napi_value value = NULL;
        execute(env, job);
        if (job->error[0] != '\0') {
            napi_value msg, err, code;
            napi_create_string_utf8(env, job->error, NAPI_AUTO_LENGTH, &msg);
            napi_create_string_utf8(env, "ERR_KEY_OPERATION", NAPI_AUTO_LENGTH,
                                    &code);
            napi_create_error(env, code, msg, &err);
            napi_throw(env, err);
        } else if (result_value(env, job, &value) != napi_ok) {
            value = addon_throw(env, "ERR_NO_MEMORY", "out of memory");
        }
        job_free(job);
        return value;
    }

    napi_value promise, name;
    char resource[32];
    snprintf(resource, sizeof(resource), "kmsbridge.%s", op_names[kind]);
    napi_create_string_utf8(env, resource, NAPI_AUTO_LENGTH, &name);
    if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
        napi_create_async_work(env, NULL, name, execute, complete, job,
                               &job->work) != napi_ok ||
        napi_queue_async_work(env, job->work) != napi_ok) {
        job_free(job);
        return addon_throw(env, "ERR_ASYNC",
                           "could not queue the key operation");
    }
    return promise;
}

static napi_value sign(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_SIGN, 0);
}

static napi_value decrypt(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_DECRYPT, 0);
}

static napi_value sign_now(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_SIGN, 1);
}

static napi_value decrypt_now(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_DECRYPT, 1);
}

static napi_value verify(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_VERIFY, 0);
}

static napi_value encrypt(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_ENCRYPT, 0);
}

static napi_value verify_now(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_VERIFY, 1);
}

static napi_value encrypt_now(napi_env env, napi_callback_info info)
{
    return start(env, info, OP_ENCRYPT, 1);
}

napi_status local_crypto_register(napi_env env, napi_value exports)
{
    const napi_property_descriptor props[] = {
        {"loadPrivateKey", NULL, load_private_key, NULL, NULL, NULL,
         napi_default, NULL},
        {"sign", NULL, sign, NULL, NULL, NULL, napi_default, NULL},
        {"decrypt", NULL, decrypt, NULL, NULL, NULL, napi_default, NULL},
        {"signNow", NULL, sign_now, NULL, NULL, NULL, napi_default, NULL},
        {"decryptNow", NULL, decrypt_now, NULL, NULL, NULL, napi_default, NULL},
        {"loadPublicKey", NULL, load_public_key, NULL, NULL, NULL, napi_default,
         NULL},
        {"verify", NULL, verify, NULL, NULL, NULL, napi_default, NULL},
        {"encrypt", NULL, encrypt, NULL, NULL, NULL, napi_default, NULL},
        {"verifyNow", NULL, verify_now, NULL, NULL, NULL, napi_default, NULL},
        {"encryptNow", NULL, encrypt_now, NULL, NULL, NULL, napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
