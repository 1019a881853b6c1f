/*
 * KEYEXCH: ECDH with a key held by the key manager. The peer key arrives as
 * a public key imported into our keymgmt; it travels as SubjectPublicKeyInfo.
 */
#include "errors.h"
#include "log.h"
#include "provider.h"

#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

static OSSL_FUNC_keyexch_newctx_fn kb_ecdh_newctx;
static OSSL_FUNC_keyexch_init_fn kb_ecdh_init;
static OSSL_FUNC_keyexch_set_peer_fn kb_ecdh_set_peer;
static OSSL_FUNC_keyexch_derive_fn kb_ecdh_derive;
static OSSL_FUNC_keyexch_freectx_fn kb_ecdh_freectx;
static OSSL_FUNC_keyexch_dupctx_fn kb_ecdh_dupctx;
static OSSL_FUNC_keyexch_set_ctx_params_fn kb_ecdh_set_ctx_params;
static OSSL_FUNC_keyexch_settable_ctx_params_fn kb_ecdh_settable;

struct kb_ecdh_ctx {
    struct kb_prov *prov;
    struct kb_key *key;
    struct kb_key *peer;
};

static void *kb_ecdh_newctx(void *provctx)
{
    struct kb_ecdh_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx != NULL)
        ctx->prov = provctx;
    return ctx;
}

static void kb_ecdh_freectx(void *vctx)
{
    struct kb_ecdh_ctx *ctx = vctx;
    if (ctx == NULL)
        return;
    kb_key_free(ctx->key);
    kb_key_free(ctx->peer);
    free(ctx);
}

static void *kb_ecdh_dupctx(void *vctx)
{
    struct kb_ecdh_ctx *src = vctx, *dst = malloc(sizeof(*dst));
    if (dst == NULL)
        return NULL;
    *dst = *src;
    kb_key_up_ref(dst->key);
    kb_key_up_ref(dst->peer);
    return dst;
}

static int kb_ecdh_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    struct kb_ecdh_ctx *ctx = vctx;
    struct kb_key *key = provkey;

    (void)params;
    if (key == NULL || key->type != KB_KEY_EC || key->uri == NULL) {
        kb_raise(ctx->prov, KB_R_NO_PRIVATE_KEY,
                 "ECDH needs an EC key held by a key manager");
        return 0;
    }
    kb_key_up_ref(key);
    kb_key_free(ctx->key);
    ctx->key = key;
    return 1;
}

static int kb_ecdh_set_peer(void *vctx, void *provkey)
{
    struct kb_ecdh_ctx *ctx = vctx;
    struct kb_key *peer = provkey;

    if (peer == NULL || peer->type != KB_KEY_EC || peer->pub == NULL) {
        kb_raise(ctx->prov, KB_R_INVALID_ARGUMENT, "the peer is not an EC key");
        return 0;
    }
    kb_key_up_ref(peer);
    kb_key_free(ctx->peer);
    ctx->peer = peer;
    return 1;
}

static int kb_ecdh_derive(void *vctx, unsigned char *secret, size_t *secretlen,
                          size_t outlen)
{
    struct kb_ecdh_ctx *ctx = vctx;
    unsigned char *spki = NULL;
    int spki_len;

    if (ctx->key == NULL || ctx->peer == NULL) {
        kb_raise(ctx->prov, KB_R_NOT_INITIALIZED,
                 "ECDH needs a key and a peer key");
        return 0;
    }
    size_t size = (size_t)(EVP_PKEY_get_bits(ctx->key->pub) + 7) / 8;
    if (secret == NULL) {
        *secretlen = size;
        return 1;
    }
    if (!kb_key_check_use(ctx->key, "ecdh", NULL))
        return 0;
    spki_len = i2d_PUBKEY(ctx->peer->pub, &spki);
    if (spki_len <= 0) {
        kb_raise(ctx->prov, KB_R_INVALID_ARGUMENT,
                 "cannot encode the peer key");
        return 0;
    }

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_DERIVE, 0);
    kb_frame_str(&req, KB_TAG_URI, ctx->key->uri);
    kb_frame_bytes(&req, KB_TAG_PEER_KEY, spki, (size_t)spki_len);
    OPENSSL_free(spki);
    KB_LOG("derive %s", ctx->key->uri);
    int ok = kb_prov_call(ctx->prov, &req, ctx->key->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    if (r == NULL || r->len > outlen) {
        kb_raise(ctx->prov, r == NULL ? KB_R_PROTOCOL : KB_R_BUFFER_TOO_SMALL,
                 "shared secret of %u bytes does not fit (%zu)",
                 r != NULL ? r->len : 0, outlen);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(secret, r->val, r->len);
    *secretlen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

static int kb_ecdh_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    struct kb_ecdh_ctx *ctx = vctx;
    const OSSL_PARAM *p =
        OSSL_PARAM_locate_const(params, OSSL_EXCHANGE_PARAM_KDF_TYPE);
    if (p != NULL && p->data_type == OSSL_PARAM_UTF8_STRING &&
        ((const char *)p->data)[0] != '\0') {
        kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                 "ECDH with a KDF is not offered; derive the plain secret");
        return 0;
    }
    return 1;
}

static const OSSL_PARAM kb_ecdh_settable_params[] = {
    OSSL_PARAM_utf8_string(OSSL_EXCHANGE_PARAM_KDF_TYPE, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_ecdh_settable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_ecdh_settable_params;
}

const OSSL_DISPATCH kb_ecdh_keyexch_functions[] = {
    {OSSL_FUNC_KEYEXCH_NEWCTX, (void (*)(void))kb_ecdh_newctx},
    {OSSL_FUNC_KEYEXCH_INIT, (void (*)(void))kb_ecdh_init},
    {OSSL_FUNC_KEYEXCH_SET_PEER, (void (*)(void))kb_ecdh_set_peer},
    {OSSL_FUNC_KEYEXCH_DERIVE, (void (*)(void))kb_ecdh_derive},
    {OSSL_FUNC_KEYEXCH_FREECTX, (void (*)(void))kb_ecdh_freectx},
    {OSSL_FUNC_KEYEXCH_DUPCTX, (void (*)(void))kb_ecdh_dupctx},
    {OSSL_FUNC_KEYEXCH_SET_CTX_PARAMS, (void (*)(void))kb_ecdh_set_ctx_params},
    {OSSL_FUNC_KEYEXCH_SETTABLE_CTX_PARAMS, (void (*)(void))kb_ecdh_settable},
    {0, NULL},
};
