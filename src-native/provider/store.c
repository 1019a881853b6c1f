/*
 * OSSL_STORE loader for kms: URIs.
 *   kms:<keyring>/<key-id>  one private key (DESCRIBE)
 *   kms:<keyring>[/]        the names of the keyring's keys (LIST)
 *   kms:                    the names of every key the agent lists
 * Keys are handed over by reference; the keymgmt's load takes its own
 * reference, so ours is dropped once the callback returns.
 */
#include "errors.h"
#include "keyref.h"
#include "log.h"
#include "provider.h"

#include <openssl/core_object.h>
#include <openssl/store.h>
#include <stdlib.h>
#include <string.h>

static OSSL_FUNC_store_open_fn kb_store_open;
static OSSL_FUNC_store_settable_ctx_params_fn kb_store_settable_ctx_params;
static OSSL_FUNC_store_set_ctx_params_fn kb_store_set_ctx_params;
static OSSL_FUNC_store_load_fn kb_store_load;
static OSSL_FUNC_store_eof_fn kb_store_eof;
static OSSL_FUNC_store_close_fn kb_store_close;

struct kb_store_ctx {
    struct kb_prov *prov;
    char *uri;
    char *keyring; /* listing: the keyring, NULL for all */
    int listing;
    int expect; /* OSSL_STORE_INFO_* or 0 */
    int done;
    /*
     * Listing: OSSL_STORE takes one object per load() call, so the names of
     * one LIST reply are kept here and handed out one at a time.
     */
    struct kb_wire_msg *list;
    size_t next; /* index of the next field of |list| to look at */
};

static void *kb_store_open(void *provctx, const char *uri)
{
    struct kb_prov *prov = provctx;
    struct kb_store_ctx *ctx;

    if (uri == NULL || strncmp(uri, "kms:", 4) != 0)
        return NULL;
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL || (ctx->uri = strdup(uri)) == NULL) {
        free(ctx);
        kb_raise(prov, KB_R_NOMEM, "out of memory");
        return NULL;
    }
    ctx->prov = prov;
    const char *ring = uri + 4;
    const char *slash = strchr(ring, '/');
    if (slash == NULL || slash[1] == '\0') {
        ctx->listing = 1;
        size_t n = slash != NULL ? (size_t)(slash - ring) : strlen(ring);
        if (n > 0 && (ctx->keyring = strndup(ring, n)) == NULL) {
            free(ctx->uri);
            free(ctx);
            return NULL;
        }
    } else if (!kb_uri_valid(uri)) {
        kb_raise(prov, KB_R_BAD_URI,
                 "malformed key URI %s: expected kms:<keyring>/<key-id>", uri);
        free(ctx->uri);
        free(ctx);
        return NULL;
    }
    KB_LOG("store open %s%s", uri, ctx->listing ? " (listing)" : "");
    return ctx;
}

static const OSSL_PARAM kb_store_settable[] = {
    OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_store_settable_ctx_params(void *provctx)
{
    (void)provctx;
    return kb_store_settable;
}

static int kb_store_set_ctx_params(void *loaderctx, const OSSL_PARAM params[])
{
    struct kb_store_ctx *ctx = loaderctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT);
    if (p != NULL && !OSSL_PARAM_get_int(p, &ctx->expect))
        return 0;
    return 1;
}

static int load_key(struct kb_store_ctx *ctx, OSSL_CALLBACK *object_cb,
                    void *object_cbarg)
{
    struct kb_key *key = kb_key_load(ctx->prov, ctx->uri);
    int type = OSSL_OBJECT_PKEY;

    if (key == NULL)
        return 0;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type),
        OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE,
                                         (char *)kb_key_type_name(key->type),
                                         0),
        OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key,
                                          sizeof(key)),
        OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DESC, key->uri, 0),
        OSSL_PARAM_construct_end(),
    };
    int ok = object_cb(params, object_cbarg);
    kb_key_free(key);
    return ok;
}

/* Hands out the next key name of the keyring, asking the agent on the first
 * call. */
static int list_next(struct kb_store_ctx *ctx, OSSL_CALLBACK *object_cb,
                     void *object_cbarg)
{
    if (ctx->list == NULL) {
        struct kb_buf req = {0};
        kb_frame_begin(&req, 0, KB_MSG_LIST, 0);
        kb_frame_str(&req, KB_TAG_KEYRING, ctx->keyring);
        int called = kb_prov_call(ctx->prov, &req, ctx->uri, &ctx->list);
        kb_buf_free(&req);
        if (!called) {
            ctx->done = 1;
            return 0;
        }
    }
    while (ctx->next < ctx->list->nfields) {
        const struct kb_wire_field *e = &ctx->list->fields[ctx->next++];
        if (e->tag != KB_TAG_ENTRY)
            continue;
        char *uri =
            kb_wire_strdup(kb_wire_fields_find(e->sub, e->nsub, KB_TAG_URI));
        if (uri == NULL)
            continue;
        int type = OSSL_OBJECT_NAME;
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type),
            OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA, uri, 0),
            OSSL_PARAM_END,
        };
        int ok = object_cb(params, object_cbarg);
        free(uri);
        if (ctx->next >= ctx->list->nfields)
            ctx->done = 1;
        return ok;
    }
    ctx->done = 1;
    return 1;
}

static int kb_store_load(void *loaderctx, OSSL_CALLBACK *object_cb,
                         void *object_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb,
                         void *pw_cbarg)
{
    struct kb_store_ctx *ctx = loaderctx;

    (void)pw_cb; /* credentials live in the KeyService, never here */
    (void)pw_cbarg;
    if (ctx->done)
        return 0;
    if (ctx->listing) {
        if (ctx->expect != 0 && ctx->expect != OSSL_STORE_INFO_NAME) {
            ctx->done = 1;
            return 1;
        }
        return list_next(ctx, object_cb, object_cbarg);
    }
    ctx->done = 1;
    if (ctx->expect != 0 && ctx->expect != OSSL_STORE_INFO_PKEY &&
        ctx->expect != OSSL_STORE_INFO_PUBKEY)
        return 1; /* we hold keys only: nothing of the expected kind */
    return load_key(ctx, object_cb, object_cbarg);
}

static int kb_store_eof(void *loaderctx)
{
    return ((struct kb_store_ctx *)loaderctx)->done;
}

static int kb_store_close(void *loaderctx)
{
    struct kb_store_ctx *ctx = loaderctx;
    if (ctx == NULL)
        return 1;
    kb_wire_msg_free(ctx->list);
    free(ctx->uri);
    free(ctx->keyring);
    free(ctx);
    return 1;
}

const OSSL_DISPATCH kb_store_functions[] = {
    {OSSL_FUNC_STORE_OPEN, (void (*)(void))kb_store_open},
    {OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS,
     (void (*)(void))kb_store_settable_ctx_params},
    {OSSL_FUNC_STORE_SET_CTX_PARAMS, (void (*)(void))kb_store_set_ctx_params},
    {OSSL_FUNC_STORE_LOAD, (void (*)(void))kb_store_load},
    {OSSL_FUNC_STORE_EOF, (void (*)(void))kb_store_eof},
    {OSSL_FUNC_STORE_CLOSE, (void (*)(void))kb_store_close},
    {0, NULL},
};
