/*
 * ASYM_CIPHER: RSA decryption by the key manager (OAEP with digest, MGF1
 * digest and label; PKCS#1 v1.5 where the keyring allows it). Encryption is
 * a public-key operation and is delegated to the cached public half.
 */
#include "errors.h"
#include "log.h"
#include "provider.h"

#include <openssl/rsa.h>
#include <stdlib.h>
#include <string.h>

static OSSL_FUNC_asym_cipher_newctx_fn kb_rsa_cipher_newctx;
static OSSL_FUNC_asym_cipher_freectx_fn kb_cipher_freectx;
static OSSL_FUNC_asym_cipher_dupctx_fn kb_cipher_dupctx;
static OSSL_FUNC_asym_cipher_decrypt_init_fn kb_cipher_decrypt_init;
static OSSL_FUNC_asym_cipher_decrypt_fn kb_cipher_decrypt;
static OSSL_FUNC_asym_cipher_encrypt_init_fn kb_cipher_encrypt_init;
static OSSL_FUNC_asym_cipher_encrypt_fn kb_cipher_encrypt;
static OSSL_FUNC_asym_cipher_get_ctx_params_fn kb_cipher_get_ctx_params;
static OSSL_FUNC_asym_cipher_gettable_ctx_params_fn kb_cipher_gettable;
static OSSL_FUNC_asym_cipher_set_ctx_params_fn kb_cipher_set_ctx_params;
static OSSL_FUNC_asym_cipher_settable_ctx_params_fn kb_cipher_settable;

struct kb_cipher_ctx {
    struct kb_prov *prov;
    struct kb_key *key;
    int pad; /* RSA_PKCS1_PADDING or RSA_PKCS1_OAEP_PADDING */
    EVP_MD *md;
    EVP_MD *mgf1;
    unsigned char *label;
    size_t label_len;
};

static void *kb_rsa_cipher_newctx(void *provctx)
{
    struct kb_cipher_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return NULL;
    ctx->prov = provctx;
    ctx->pad = RSA_PKCS1_PADDING; /* OpenSSL's default */
    return ctx;
}

static void kb_cipher_freectx(void *vctx)
{
    struct kb_cipher_ctx *ctx = vctx;
    if (ctx == NULL)
        return;
    kb_key_free(ctx->key);
    EVP_MD_free(ctx->md);
    EVP_MD_free(ctx->mgf1);
    free(ctx->label);
    free(ctx);
}

static void *kb_cipher_dupctx(void *vctx)
{
    struct kb_cipher_ctx *src = vctx, *dst = malloc(sizeof(*dst));
    if (dst == NULL)
        return NULL;
    *dst = *src;
    dst->label = NULL;
    if (src->label_len > 0) {
        dst->label = malloc(src->label_len);
        if (dst->label == NULL) {
            free(dst);
            return NULL;
        }
        memcpy(dst->label, src->label, src->label_len);
    }
    kb_key_up_ref(dst->key);
    if (dst->md != NULL)
        EVP_MD_up_ref(dst->md);
    if (dst->mgf1 != NULL)
        EVP_MD_up_ref(dst->mgf1);
    return dst;
}

static EVP_MD *fetch_md(struct kb_cipher_ctx *ctx, const OSSL_PARAM *p)
{
    const char *name = NULL;
    if (!OSSL_PARAM_get_utf8_string_ptr(p, &name))
        return NULL;
    EVP_MD *md = kb_prov_fetch_md(ctx->prov, name);
    if (md == NULL || kb_md_wire_name(md) == NULL) {
        kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                 "OAEP digest %s is not supported (sha1, sha224, sha256, "
                 "sha384, sha512)",
                 name);
        EVP_MD_free(md);
        return NULL;
    }
    return md;
}

static int kb_cipher_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    struct kb_cipher_ctx *ctx = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE);
    if (p != NULL) {
        int pad = -1;
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            const char *s = p->data;
            if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0)
                pad = RSA_PKCS1_PADDING;
            else if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_OAEP) == 0)
                pad = RSA_PKCS1_OAEP_PADDING;
        } else if (!OSSL_PARAM_get_int(p, &pad)) {
            return 0;
        }
        if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_OAEP_PADDING) {
            kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                     "RSA decryption padding must be oaep or pkcs1");
            return 0;
        }
        ctx->pad = pad;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST);
    if (p != NULL) {
        EVP_MD *md = fetch_md(ctx, p);
        if (md == NULL)
            return 0;
        EVP_MD_free(ctx->md);
        ctx->md = md;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        EVP_MD *md = fetch_md(ctx, p);
        if (md == NULL)
            return 0;
        EVP_MD_free(ctx->mgf1);
        ctx->mgf1 = md;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL);
    if (p != NULL) {
        void *label = NULL;
        size_t len = 0;
        if (!OSSL_PARAM_get_octet_string(p, &label, 0, &len))
            return 0;
        free(ctx->label);
        ctx->label = label;
        ctx->label_len = len;
    }
    return 1;
}

static const OSSL_PARAM kb_cipher_settable_params[] = {
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST_PROPS, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST_PROPS, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_cipher_settable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_cipher_settable_params;
}

static int kb_cipher_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    struct kb_cipher_ctx *ctx = vctx;
    OSSL_PARAM *p;

    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE);
    if (p != NULL) {
        int ok = p->data_type == OSSL_PARAM_UTF8_STRING
                     ? OSSL_PARAM_set_utf8_string(
                           p, ctx->pad == RSA_PKCS1_OAEP_PADDING
                                  ? OSSL_PKEY_RSA_PAD_MODE_OAEP
                                  : OSSL_PKEY_RSA_PAD_MODE_PKCSV15)
                     : OSSL_PARAM_set_int(p, ctx->pad);
        if (!ok)
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST);
    if (p != NULL && !OSSL_PARAM_set_utf8_string(
                         p, ctx->md ? EVP_MD_get0_name(ctx->md) : "SHA1"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        const EVP_MD *m = ctx->mgf1 != NULL ? ctx->mgf1 : ctx->md;
        if (!OSSL_PARAM_set_utf8_string(p, m ? EVP_MD_get0_name(m) : "SHA1"))
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL);
    if (p != NULL && !OSSL_PARAM_set_octet_ptr(p, ctx->label, ctx->label_len))
        return 0;
    return 1;
}

static const OSSL_PARAM kb_cipher_gettable_params[] = {
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_octet_ptr(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_cipher_gettable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_cipher_gettable_params;
}

static int cipher_init(struct kb_cipher_ctx *ctx, struct kb_key *key,
                       const OSSL_PARAM params[])
{
    if (key == NULL || key->type != KB_KEY_RSA || key->pub == NULL) {
        kb_raise(ctx->prov, KB_R_INVALID_ARGUMENT, "not an RSA key");
        return 0;
    }
    kb_key_up_ref(key);
    kb_key_free(ctx->key);
    ctx->key = key;
    return kb_cipher_set_ctx_params(ctx, params);
}

static int kb_cipher_decrypt_init(void *vctx, void *provkey,
                                  const OSSL_PARAM params[])
{
    return cipher_init(vctx, provkey, params);
}

static int kb_cipher_encrypt_init(void *vctx, void *provkey,
                                  const OSSL_PARAM params[])
{
    return cipher_init(vctx, provkey, params);
}

static int kb_cipher_decrypt(void *vctx, unsigned char *out, size_t *outlen,
                             size_t outsize, const unsigned char *in,
                             size_t inlen)
{
    struct kb_cipher_ctx *ctx = vctx;
    struct kb_key *key = ctx->key;
    size_t max;
    const char *alg, *digest = NULL, *mgf1 = NULL;

    if (key == NULL)
        return 0;
    max = (size_t)EVP_PKEY_get_size(key->pub);
    if (out == NULL) {
        *outlen = max;
        return 1;
    }
    if (ctx->pad == RSA_PKCS1_OAEP_PADDING) {
        alg = "rsa-oaep";
        digest = ctx->md != NULL ? kb_md_wire_name(ctx->md) : "sha1";
        mgf1 = ctx->mgf1 != NULL ? kb_md_wire_name(ctx->mgf1) : digest;
    } else {
        alg = "rsa-pkcs1-decrypt";
    }
    if (!kb_key_check_use(key, alg, NULL))
        return 0;

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_DECRYPT, 0);
    kb_frame_str(&req, KB_TAG_URI, key->uri);
    kb_frame_str(&req, KB_TAG_ALGORITHM, alg);
    kb_frame_str(&req, KB_TAG_DIGEST, digest);
    if (mgf1 != NULL && strcmp(mgf1, digest) != 0)
        kb_frame_str(&req, KB_TAG_MGF1_DIGEST, mgf1);
    if (ctx->label_len > 0)
        kb_frame_bytes(&req, KB_TAG_LABEL, ctx->label, ctx->label_len);
    kb_frame_bytes(&req, KB_TAG_DATA, in, inlen);
    KB_LOG("decrypt %s %s digest=%s, %zu bytes", key->uri, alg,
           digest ? digest : "-", inlen);
    int ok = kb_prov_call(ctx->prov, &req, key->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    if (r == NULL || r->len > outsize) {
        kb_raise(ctx->prov, r == NULL ? KB_R_PROTOCOL : KB_R_BUFFER_TOO_SMALL,
                 "plaintext of %u bytes does not fit (%zu)",
                 r != NULL ? r->len : 0, outsize);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(out, r->val, r->len);
    *outlen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

static int kb_cipher_encrypt(void *vctx, unsigned char *out, size_t *outlen,
                             size_t outsize, const unsigned char *in,
                             size_t inlen)
{
    struct kb_cipher_ctx *ctx = vctx;
    EVP_PKEY_CTX *pctx;
    int ok;

    if (ctx->key == NULL)
        return 0;
    pctx = EVP_PKEY_CTX_new_from_pkey(ctx->prov->libctx, ctx->key->pub,
                                      KB_PROPQ_OTHERS);
    ok = pctx != NULL && EVP_PKEY_encrypt_init(pctx) > 0 &&
         EVP_PKEY_CTX_set_rsa_padding(pctx, ctx->pad) > 0;
    if (ok && ctx->pad == RSA_PKCS1_OAEP_PADDING) {
        ok = (ctx->md == NULL ||
              EVP_PKEY_CTX_set_rsa_oaep_md(pctx, ctx->md) > 0) &&
             (ctx->mgf1 == NULL ||
              EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, ctx->mgf1) > 0);
        if (ok && ctx->label_len > 0) {
            unsigned char *l = OPENSSL_memdup(ctx->label, ctx->label_len);
            ok = l != NULL && EVP_PKEY_CTX_set0_rsa_oaep_label(
                                  pctx, l, (int)ctx->label_len) > 0;
            if (!ok)
                OPENSSL_free(l);
        }
    }
    size_t len = outsize;
    if (ok)
        ok = EVP_PKEY_encrypt(pctx, out, &len, in, inlen) > 0;
    if (ok)
        *outlen = len;
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

const OSSL_DISPATCH kb_rsa_asym_cipher_functions[] = {
    {OSSL_FUNC_ASYM_CIPHER_NEWCTX, (void (*)(void))kb_rsa_cipher_newctx},
    {OSSL_FUNC_ASYM_CIPHER_FREECTX, (void (*)(void))kb_cipher_freectx},
    {OSSL_FUNC_ASYM_CIPHER_DUPCTX, (void (*)(void))kb_cipher_dupctx},
    {OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT,
     (void (*)(void))kb_cipher_decrypt_init},
    {OSSL_FUNC_ASYM_CIPHER_DECRYPT, (void (*)(void))kb_cipher_decrypt},
    {OSSL_FUNC_ASYM_CIPHER_ENCRYPT_INIT,
     (void (*)(void))kb_cipher_encrypt_init},
    {OSSL_FUNC_ASYM_CIPHER_ENCRYPT, (void (*)(void))kb_cipher_encrypt},
    {OSSL_FUNC_ASYM_CIPHER_GET_CTX_PARAMS,
     (void (*)(void))kb_cipher_get_ctx_params},
    {OSSL_FUNC_ASYM_CIPHER_GETTABLE_CTX_PARAMS,
     (void (*)(void))kb_cipher_gettable},
    {OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS,
     (void (*)(void))kb_cipher_set_ctx_params},
    {OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS,
     (void (*)(void))kb_cipher_settable},
    {0, NULL},
};
