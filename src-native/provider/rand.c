/*
 * RAND "KMSBRIDGE": random bytes from the key manager, offered only when the
 * provider's configuration says enable_rand = 1 (for chroots without
 * /dev/urandom and for audited randomness). Select it in openssl.cnf with
 * [random] random = KMSBRIDGE, random_properties = provider=kmsbridge.
 */
#include "errors.h"
#include "log.h"
#include "provider.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

static OSSL_FUNC_rand_newctx_fn kb_rand_newctx;
static OSSL_FUNC_rand_freectx_fn kb_rand_freectx;
static OSSL_FUNC_rand_instantiate_fn kb_rand_instantiate;
static OSSL_FUNC_rand_uninstantiate_fn kb_rand_uninstantiate;
static OSSL_FUNC_rand_generate_fn kb_rand_generate;
static OSSL_FUNC_rand_reseed_fn kb_rand_reseed;
static OSSL_FUNC_rand_enable_locking_fn kb_rand_enable_locking;
static OSSL_FUNC_rand_lock_fn kb_rand_lock;
static OSSL_FUNC_rand_unlock_fn kb_rand_unlock;
static OSSL_FUNC_rand_get_ctx_params_fn kb_rand_get_ctx_params;
static OSSL_FUNC_rand_gettable_ctx_params_fn kb_rand_gettable;

struct kb_rand_ctx {
    struct kb_prov *prov;
    int state;
};

static void *kb_rand_newctx(void *provctx, void *parent,
                            const OSSL_DISPATCH *parent_calls)
{
    struct kb_rand_ctx *ctx = calloc(1, sizeof(*ctx));
    (void)parent; /* the key manager needs no seed from us */
    (void)parent_calls;
    if (ctx == NULL)
        return NULL;
    ctx->prov = provctx;
    ctx->state = EVP_RAND_STATE_UNINITIALISED;
    return ctx;
}

static void kb_rand_freectx(void *vctx)
{
    free(vctx);
}

static int kb_rand_instantiate(void *vctx, unsigned int strength,
                               int prediction_resistance,
                               const unsigned char *pstr, size_t pstr_len,
                               const OSSL_PARAM params[])
{
    struct kb_rand_ctx *ctx = vctx;
    (void)strength;
    (void)prediction_resistance;
    (void)pstr;
    (void)pstr_len;
    (void)params;
    ctx->state = EVP_RAND_STATE_READY;
    return 1;
}

static int kb_rand_uninstantiate(void *vctx)
{
    ((struct kb_rand_ctx *)vctx)->state = EVP_RAND_STATE_UNINITIALISED;
    return 1;
}

static int kb_rand_generate(void *vctx, unsigned char *out, size_t outlen,
                            unsigned int strength, int prediction_resistance,
                            const unsigned char *addin, size_t addin_len)
{
    struct kb_rand_ctx *ctx = vctx;
    (void)strength;
    (void)prediction_resistance;
    (void)addin; /* additional input is not sent to the key manager */
    (void)addin_len;

    while (outlen > 0) {
        size_t n = outlen > KB_WIRE_MAX_RANDOM ? KB_WIRE_MAX_RANDOM : outlen;
        struct kb_buf req = {0};
        struct kb_wire_msg *reply = NULL;
        kb_frame_begin(&req, 0, KB_MSG_RANDOM, 0);
        kb_frame_u32(&req, KB_TAG_LENGTH, (uint32_t)n);
        int ok = kb_prov_call(ctx->prov, &req, NULL, &reply);
        kb_buf_free(&req);
        if (!ok) {
            ctx->state = EVP_RAND_STATE_ERROR;
            return 0;
        }
        const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
        if (r == NULL || r->len != n) {
            kb_raise(ctx->prov, KB_R_PROTOCOL,
                     "asked the key manager for %zu random bytes, got %u", n,
                     r != NULL ? r->len : 0);
            kb_wire_msg_free(reply);
            return 0;
        }
        memcpy(out, r->val, n);
        kb_wire_msg_free(reply);
        out += n;
        outlen -= n;
    }
    return 1;
}

static int kb_rand_reseed(void *vctx, int prediction_resistance,
                          const unsigned char *ent, size_t ent_len,
                          const unsigned char *addin, size_t addin_len)
{
    (void)vctx;
    (void)prediction_resistance;
    (void)ent;
    (void)ent_len;
    (void)addin;
    (void)addin_len;
    return 1;
}

/* The channel is thread-safe; no lock is needed around generate. */
static int kb_rand_enable_locking(void *vctx)
{
    (void)vctx;
    return 1;
}

static int kb_rand_lock(void *vctx)
{
    (void)vctx;
    return 1;
}

static void kb_rand_unlock(void *vctx)
{
    (void)vctx;
}

static int kb_rand_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    struct kb_rand_ctx *ctx = vctx;
    OSSL_PARAM *p;

    p = OSSL_PARAM_locate(params, OSSL_RAND_PARAM_STATE);
    if (p != NULL && !OSSL_PARAM_set_int(p, ctx->state))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_RAND_PARAM_STRENGTH);
    if (p != NULL && !OSSL_PARAM_set_uint(p, 256))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_RAND_PARAM_MAX_REQUEST);
    if (p != NULL && !OSSL_PARAM_set_size_t(p, 1u << 20))
        return 0;
    return 1;
}

static const OSSL_PARAM kb_rand_gettable_params[] = {
    OSSL_PARAM_int(OSSL_RAND_PARAM_STATE, NULL),
    OSSL_PARAM_uint(OSSL_RAND_PARAM_STRENGTH, NULL),
    OSSL_PARAM_size_t(OSSL_RAND_PARAM_MAX_REQUEST, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_rand_gettable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_rand_gettable_params;
}

const OSSL_DISPATCH kb_rand_functions[] = {
    {OSSL_FUNC_RAND_NEWCTX, (void (*)(void))kb_rand_newctx},
    {OSSL_FUNC_RAND_FREECTX, (void (*)(void))kb_rand_freectx},
    {OSSL_FUNC_RAND_INSTANTIATE, (void (*)(void))kb_rand_instantiate},
    {OSSL_FUNC_RAND_UNINSTANTIATE, (void (*)(void))kb_rand_uninstantiate},
    {OSSL_FUNC_RAND_GENERATE, (void (*)(void))kb_rand_generate},
    {OSSL_FUNC_RAND_RESEED, (void (*)(void))kb_rand_reseed},
    {OSSL_FUNC_RAND_ENABLE_LOCKING, (void (*)(void))kb_rand_enable_locking},
    {OSSL_FUNC_RAND_LOCK, (void (*)(void))kb_rand_lock},
    {OSSL_FUNC_RAND_UNLOCK, (void (*)(void))kb_rand_unlock},
    {OSSL_FUNC_RAND_GET_CTX_PARAMS, (void (*)(void))kb_rand_get_ctx_params},
    {OSSL_FUNC_RAND_GETTABLE_CTX_PARAMS, (void (*)(void))kb_rand_gettable},
    {0, NULL},
};
