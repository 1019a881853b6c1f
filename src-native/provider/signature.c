/*
 * SIGNATURE: RSA (PKCS#1 v1.5 and PSS), ECDSA and Ed25519 by the key manager.
 *
 * Digest-sign hashes locally and sends only the digest; Ed25519 signs the
 * whole message in one shot. Verification never needs the key manager: it is
 * delegated to the cached public half (another provider), so that even a
 * verify that OpenSSL routes here works.
 */
#include "errors.h"
#include "log.h"
#include "names.h"
#include "provider.h"

#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static OSSL_FUNC_signature_newctx_fn kb_rsa_sig_newctx, kb_ecdsa_newctx,
    kb_ed25519_sig_newctx;
static OSSL_FUNC_signature_freectx_fn kb_sig_freectx;
static OSSL_FUNC_signature_dupctx_fn kb_sig_dupctx;
static OSSL_FUNC_signature_sign_init_fn kb_sig_sign_init;
static OSSL_FUNC_signature_sign_fn kb_sig_sign;
static OSSL_FUNC_signature_verify_init_fn kb_sig_verify_init;
static OSSL_FUNC_signature_verify_fn kb_sig_verify;
static OSSL_FUNC_signature_digest_sign_init_fn kb_sig_digest_sign_init;
static OSSL_FUNC_signature_digest_sign_update_fn kb_sig_digest_update;
static OSSL_FUNC_signature_digest_sign_final_fn kb_sig_digest_sign_final;
static OSSL_FUNC_signature_digest_verify_init_fn kb_sig_digest_verify_init;
static OSSL_FUNC_signature_digest_verify_final_fn kb_sig_digest_verify_final;
static OSSL_FUNC_signature_digest_sign_init_fn kb_ed_digest_sign_init;
static OSSL_FUNC_signature_digest_sign_fn kb_ed_digest_sign;
static OSSL_FUNC_signature_digest_verify_init_fn kb_ed_digest_verify_init;
static OSSL_FUNC_signature_digest_verify_fn kb_ed_digest_verify;
static OSSL_FUNC_signature_get_ctx_params_fn kb_sig_get_ctx_params;
static OSSL_FUNC_signature_gettable_ctx_params_fn kb_rsa_sig_gettable,
    kb_ecdsa_gettable, kb_ed25519_sig_gettable;
static OSSL_FUNC_signature_set_ctx_params_fn kb_sig_set_ctx_params;
static OSSL_FUNC_signature_settable_ctx_params_fn kb_rsa_sig_settable,
    kb_ecdsa_settable, kb_ed25519_sig_settable;

struct kb_sig_ctx {
    struct kb_prov *prov;
    enum kb_key_type type; /* of the algorithm table this context came from */
    struct kb_key *key;
    int verifying;
    EVP_MD *md;
    EVP_MD_CTX *mdctx; /* digest-sign/verify in progress */
    int pad;           /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING */
    EVP_MD *mgf1;
    int saltlen; /* RSA_PSS_SALTLEN_* or a byte count */
};

static void *sig_newctx(void *provctx, enum kb_key_type type)
{
    struct kb_sig_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return NULL;
    ctx->prov = provctx;
    ctx->type = type;
    ctx->pad = RSA_PKCS1_PADDING;
    ctx->saltlen = RSA_PSS_SALTLEN_AUTO;
    return ctx;
}

static void *kb_rsa_sig_newctx(void *provctx, const char *propq)
{
    (void)propq;
    return sig_newctx(provctx, KB_KEY_RSA);
}

static void *kb_ecdsa_newctx(void *provctx, const char *propq)
{
    (void)propq;
    return sig_newctx(provctx, KB_KEY_EC);
}

static void *kb_ed25519_sig_newctx(void *provctx, const char *propq)
{
    (void)propq;
    return sig_newctx(provctx, KB_KEY_ED25519);
}

static void kb_sig_freectx(void *vctx)
{
    struct kb_sig_ctx *ctx = vctx;
    if (ctx == NULL)
        return;
    kb_key_free(ctx->key);
    EVP_MD_free(ctx->md);
    EVP_MD_free(ctx->mgf1);
    EVP_MD_CTX_free(ctx->mdctx);
    free(ctx);
}

static void *kb_sig_dupctx(void *vctx)
{
    struct kb_sig_ctx *src = vctx, *dst = malloc(sizeof(*dst));

    if (dst == NULL)
        return NULL;
    *dst = *src;
    dst->mdctx = NULL;
    kb_key_up_ref(dst->key);
    if (dst->md != NULL)
        EVP_MD_up_ref(dst->md);
    if (dst->mgf1 != NULL)
        EVP_MD_up_ref(dst->mgf1);
    if (src->mdctx != NULL) {
        dst->mdctx = EVP_MD_CTX_new();
        if (dst->mdctx == NULL || !EVP_MD_CTX_copy_ex(dst->mdctx, src->mdctx)) {
            kb_sig_freectx(dst);
            return NULL;
        }
    }
    return dst;
}

/* ---- parameters --------------------------------------------------------- */

static EVP_MD *fetch_md(struct kb_sig_ctx *ctx, const char *name)
{
    EVP_MD *md = kb_prov_fetch_md(ctx->prov, name);
    if (md == NULL) {
        kb_raise(ctx->prov, KB_R_UNSUPPORTED, "unknown digest %s", name);
        return NULL;
    }
    if (kb_md_wire_name(md) == NULL) {
        kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                 "digest %s is not supported by kmsbridge (sha1, sha224, "
                 "sha256, sha384, sha512)",
                 name);
        EVP_MD_free(md);
        return NULL;
    }
    return md;
}

static int set_md(struct kb_sig_ctx *ctx, const char *name)
{
    if (ctx->type == KB_KEY_ED25519) {
        if (name == NULL || name[0] == '\0')
            return 1;
        kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                 "Ed25519 signs the whole message; no digest (%s) applies",
                 name);
        return 0;
    }
    EVP_MD *md = fetch_md(ctx, name);
    if (md == NULL)
        return 0;
    EVP_MD_free(ctx->md);
    ctx->md = md;
    return 1;
}

static int set_pad(struct kb_sig_ctx *ctx, const OSSL_PARAM *p)
{
    int pad = 0;

    if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char *s = p->data;
        if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0)
            pad = RSA_PKCS1_PADDING;
        else if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0)
            pad = RSA_PKCS1_PSS_PADDING;
        else if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_NONE) == 0)
            pad = RSA_NO_PADDING;
        else
            pad = -1;
    } else if (!OSSL_PARAM_get_int(p, &pad)) {
        return 0;
    }
    if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_PSS_PADDING) {
        kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                 "RSA signature padding must be pkcs1 or pss; key managers "
                 "do not offer raw RSA");
        return 0;
    }
    ctx->pad = pad;
    return 1;
}

static int set_saltlen(struct kb_sig_ctx *ctx, const OSSL_PARAM *p)
{
    int s;

    if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char *v = p->data;
        if (strcmp(v, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0) {
            s = RSA_PSS_SALTLEN_DIGEST;
        } else if (strcmp(v, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0) {
            s = RSA_PSS_SALTLEN_MAX;
        } else if (strcmp(v, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0) {
            s = RSA_PSS_SALTLEN_AUTO;
        } else {
            char *end;
            long l = strtol(v, &end, 10);
            if (*end != '\0' || end == v || l < 0 || l > 1024) {
                kb_raise(ctx->prov, KB_R_BAD_PARAMETER,
                         "bad PSS salt length %s", v);
                return 0;
            }
            s = (int)l;
        }
    } else if (!OSSL_PARAM_get_int(p, &s)) {
        return 0;
    }
    if (s < RSA_PSS_SALTLEN_MAX) {
        kb_raise(ctx->prov, KB_R_BAD_PARAMETER, "bad PSS salt length %d", s);
        return 0;
    }
    ctx->saltlen = s;
    return 1;
}

static int kb_sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    struct kb_sig_ctx *ctx = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name))
            return 0;
        if (ctx->mdctx != NULL) {
            kb_raise(ctx->prov, KB_R_BAD_PARAMETER,
                     "the digest cannot change once hashing has started");
            return 0;
        }
        if (!set_md(ctx, name))
            return 0;
    }
    if (ctx->type != KB_KEY_RSA)
        return 1;
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL && !set_pad(ctx, p))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL && !set_saltlen(ctx, p))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name))
            return 0;
        EVP_MD *md = fetch_md(ctx, name);
        if (md == NULL)
            return 0;
        EVP_MD_free(ctx->mgf1);
        ctx->mgf1 = md;
    }
    return 1;
}

static const OSSL_PARAM kb_rsa_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ecdsa_settable_params[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_none[] = {OSSL_PARAM_END};

static const OSSL_PARAM *kb_rsa_sig_settable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_rsa_settable;
}

static const OSSL_PARAM *kb_ecdsa_settable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_ecdsa_settable_params;
}

static const OSSL_PARAM *kb_ed25519_sig_settable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_none;
}

/* The PSS salt length in bytes; raises if the key manager cannot do it. */
static int resolve_saltlen(struct kb_sig_ctx *ctx, size_t mdsize, int *out)
{
    int rsa_size = EVP_PKEY_get_size(ctx->key->pub);
    int bits = EVP_PKEY_get_bits(ctx->key->pub);
    int max = rsa_size - (int)mdsize - 2;
    int s;

    if (((bits - 1) & 7) == 0)
        max--;
    switch (ctx->saltlen) {
    case RSA_PSS_SALTLEN_DIGEST:
        s = (int)mdsize;
        break;
    case RSA_PSS_SALTLEN_AUTO:
        /* the verifier recovers any length: pick one the backend takes */
        s = ctx->key->pss_salt_digest ? (int)mdsize : max;
        break;
    case RSA_PSS_SALTLEN_MAX:
        s = max;
        break;
    default:
        s = ctx->saltlen;
        break;
    }
    if (s < 0 || s > max) {
        kb_raise(ctx->prov, KB_R_BAD_PARAMETER,
                 "PSS salt length %d does not fit a %d-bit key", s, bits);
        return 0;
    }
    if (ctx->key->pss_salt_digest && s != (int)mdsize) {
        kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                 "the key manager of %s only signs PSS with a salt as long as "
                 "the digest (%zu bytes), not %d",
                 ctx->key->uri, mdsize, s);
        return 0;
    }
    *out = s;
    return 1;
}

/* ---- AlgorithmIdentifier for X.509 and CMS ------------------------------ */

static size_t der_wrap(unsigned char *out, unsigned char tag,
                       const unsigned char *in, size_t len)
{
    /* every structure here is shorter than 128 bytes */
    out[0] = tag;
    out[1] = (unsigned char)len;
    memmove(out + 2, in, len);
    return len + 2;
}

static size_t der_oid(unsigned char *out, const char *hex)
{
    unsigned char raw[16];
    size_t n = 0;
    for (const char *c = hex; c[0] != '\0' && c[1] != '\0'; c += 2) {
        unsigned int b;
        sscanf(c, "%2x", &b);
        raw[n++] = (unsigned char)b;
    }
    return der_wrap(out, 0x06, raw, n);
}

static const char *hash_oid(const char *wire)
{
    if (strcmp(wire, "sha1") == 0)
        return "2b0e03021a";
    if (strcmp(wire, "sha224") == 0)
        return "608648016503040204";
    if (strcmp(wire, "sha256") == 0)
        return "608648016503040201";
    if (strcmp(wire, "sha384") == 0)
        return "608648016503040202";
    return "608648016503040203";
}

static size_t hash_algid(unsigned char *out, const char *wire)
{
    unsigned char oid[16];
    size_t n = der_oid(oid, hash_oid(wire));
    return der_wrap(out, 0x30, oid, n); /* parameters absent */
}

static size_t algorithm_id(struct kb_sig_ctx *ctx, unsigned char *out)
{
    unsigned char oid[24], body[128], tmp[128];
    const char *md = ctx->md != NULL ? kb_md_wire_name(ctx->md) : NULL;
    size_t n;

    if (ctx->type == KB_KEY_ED25519) {
        n = der_oid(oid, "2b6570");
        return der_wrap(out, 0x30, oid, n);
    }
    if (md == NULL)
        return 0;
    if (ctx->type == KB_KEY_EC) {
        static const char *const ecdsa[] = {
            "2a8648ce3d0401", "2a8648ce3d040301", "2a8648ce3d040302",
            "2a8648ce3d040303", "2a8648ce3d040304"};
        static const char *const names[] = {"sha1", "sha224", "sha256",
                                            "sha384", "sha512"};
        for (size_t i = 0; i < 5; i++) {
            if (strcmp(md, names[i]) == 0) {
                n = der_oid(oid, ecdsa[i]);
                return der_wrap(out, 0x30, oid, n);
            }
        }
        return 0;
    }
    if (ctx->pad == RSA_PKCS1_PADDING) {
        static const char *const suffix[] = {"05", "0e", "0b", "0c", "0d"};
        static const char *const names[] = {"sha1", "sha224", "sha256",
                                            "sha384", "sha512"};
        for (size_t i = 0; i < 5; i++) {
            if (strcmp(md, names[i]) == 0) {
                char hex[32];
                snprintf(hex, sizeof(hex), "2a864886f70d0101%s", suffix[i]);
                n = der_oid(body, hex);
                body[n++] = 0x05; /* NULL parameters */
                body[n++] = 0x00;
                return der_wrap(out, 0x30, body, n);
            }
        }
        return 0;
    }
    /* RSASSA-PSS-params: defaults (SHA-1, MGF1-SHA-1, salt 20) omitted */
    const char *mgf1 = ctx->mgf1 != NULL ? kb_md_wire_name(ctx->mgf1) : md;
    int salt;
    if (!resolve_saltlen(ctx, kb_md_wire_size(md), &salt))
        return 0;
    size_t pn = 0;
    if (strcmp(md, "sha1") != 0) {
        n = hash_algid(tmp, md);
        pn += der_wrap(body + pn, 0xa0, tmp, n);
    }
    if (strcmp(mgf1, "sha1") != 0) {
        unsigned char mgf[64];
        size_t m = der_oid(mgf, "2a864886f70d010108");
        m += hash_algid(mgf + m, mgf1);
        n = der_wrap(tmp, 0x30, mgf, m);
        pn += der_wrap(body + pn, 0xa1, tmp, n);
    }
    if (salt != 20) {
        unsigned char integer[4];
        size_t il = 0;
        if (salt > 0xff)
            integer[il++] = (unsigned char)(salt >> 8);
        integer[il++] = (unsigned char)salt;
        if (integer[0] & 0x80) {
            memmove(integer + 1, integer, il);
            integer[0] = 0;
            il++;
        }
        n = der_wrap(tmp, 0x02, integer, il);
        pn += der_wrap(body + pn, 0xa2, tmp, n);
    }
    n = der_wrap(tmp, 0x30, body, pn);
    size_t an = der_oid(body, "2a864886f70d01010a");
    memcpy(body + an, tmp, n);
    return der_wrap(out, 0x30, body, an + n);
}

static int kb_sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    struct kb_sig_ctx *ctx = vctx;
    OSSL_PARAM *p;

    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID);
    if (p != NULL && ctx->key != NULL) {
        unsigned char aid[128];
        size_t n = algorithm_id(ctx, aid);
        if (n > 0 && !OSSL_PARAM_set_octet_string(p, aid, n))
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL && ctx->md != NULL &&
        !OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(ctx->md)))
        return 0;
    if (ctx->type != KB_KEY_RSA)
        return 1;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL) {
        int ok = p->data_type == OSSL_PARAM_UTF8_STRING
                     ? OSSL_PARAM_set_utf8_string(
                           p, ctx->pad == RSA_PKCS1_PSS_PADDING
                                  ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                  : OSSL_PKEY_RSA_PAD_MODE_PKCSV15)
                     : OSSL_PARAM_set_int(p, ctx->pad);
        if (!ok)
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL) {
        int ok;
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            char v[16];
            switch (ctx->saltlen) {
            case RSA_PSS_SALTLEN_DIGEST:
                strcpy(v, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST);
                break;
            case RSA_PSS_SALTLEN_MAX:
                strcpy(v, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX);
                break;
            case RSA_PSS_SALTLEN_AUTO:
                strcpy(v, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO);
                break;
            default:
                snprintf(v, sizeof(v), "%d", ctx->saltlen);
            }
            ok = OSSL_PARAM_set_utf8_string(p, v);
        } else {
            ok = OSSL_PARAM_set_int(p, ctx->saltlen);
        }
        if (!ok)
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        const EVP_MD *m = ctx->mgf1 != NULL ? ctx->mgf1 : ctx->md;
        if (m != NULL && !OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(m)))
            return 0;
    }
    return 1;
}

static const OSSL_PARAM kb_rsa_gettable_params[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ecdsa_gettable_params[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ed25519_gettable_params[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_rsa_sig_gettable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_rsa_gettable_params;
}

static const OSSL_PARAM *kb_ecdsa_gettable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_ecdsa_gettable_params;
}

static const OSSL_PARAM *kb_ed25519_sig_gettable(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return kb_ed25519_gettable_params;
}

/* ---- init --------------------------------------------------------------- */

static int sig_init(struct kb_sig_ctx *ctx, void *provkey, int verifying,
                    const OSSL_PARAM params[])
{
    struct kb_key *key = provkey;

    if (key != NULL) {
        if (key->type != ctx->type || key->pub == NULL) {
            kb_raise(ctx->prov, KB_R_INVALID_ARGUMENT,
                     "key type does not match the signature algorithm");
            return 0;
        }
        if (!verifying && key->uri == NULL) {
            kb_raise(ctx->prov, KB_R_NO_PRIVATE_KEY,
                     "signing needs a key held by a key manager, not a "
                     "public key");
            return 0;
        }
        kb_key_up_ref(key);
        kb_key_free(ctx->key);
        ctx->key = key;
    }
    if (ctx->key == NULL) {
        kb_raise(ctx->prov, KB_R_NOT_INITIALIZED, "no key");
        return 0;
    }
    ctx->verifying = verifying;
    EVP_MD_CTX_free(ctx->mdctx);
    ctx->mdctx = NULL;
    return kb_sig_set_ctx_params(ctx, params);
}

static int kb_sig_sign_init(void *vctx, void *provkey,
                            const OSSL_PARAM params[])
{
    return sig_init(vctx, provkey, 0, params);
}

static int kb_sig_verify_init(void *vctx, void *provkey,
                              const OSSL_PARAM params[])
{
    return sig_init(vctx, provkey, 1, params);
}

/* ---- signing over a digest ---------------------------------------------- */

static int do_sign(struct kb_sig_ctx *ctx, unsigned char *sig, size_t *siglen,
                   size_t sigsize, const unsigned char *tbs, size_t tbslen)
{
    struct kb_key *key = ctx->key;
    size_t max = (size_t)EVP_PKEY_get_size(key->pub);
    const char *alg, *digest = NULL, *mgf1 = NULL;
    int salt = -1;

    if (sig == NULL) {
        *siglen = max;
        return 1;
    }
    if (ctx->md != NULL) {
        digest = kb_md_wire_name(ctx->md);
        if (tbslen != (size_t)EVP_MD_get_size(ctx->md)) {
            kb_raise(ctx->prov, KB_R_INVALID_ARGUMENT,
                     "%zu bytes to sign, but a %s digest has %d", tbslen,
                     digest, EVP_MD_get_size(ctx->md));
            return 0;
        }
    }
    switch (ctx->type) {
    case KB_KEY_RSA:
        if (ctx->pad == RSA_PKCS1_PSS_PADDING) {
            alg = "rsa-pss";
            if (digest == NULL &&
                (digest = kb_md_wire_name_for_len(tbslen)) == NULL) {
                kb_raise(ctx->prov, KB_R_INVALID_ARGUMENT,
                         "PSS needs a digest; %zu bytes is no digest's size",
                         tbslen);
                return 0;
            }
            mgf1 = ctx->mgf1 != NULL ? kb_md_wire_name(ctx->mgf1) : digest;
            if (!resolve_saltlen(ctx, kb_md_wire_size(digest), &salt))
                return 0;
        } else {
            alg = "rsa-pkcs1";
        }
        break;
    case KB_KEY_EC:
        alg = "ecdsa";
        if (digest == NULL &&
            (digest = kb_md_wire_name_for_len(tbslen)) == NULL) {
            kb_raise(ctx->prov, KB_R_INVALID_ARGUMENT,
                     "ECDSA signs a digest; %zu bytes is no digest's size",
                     tbslen);
            return 0;
        }
        break;
    default:
        alg = "ed25519";
        if (key->max_message != 0 && tbslen > key->max_message) {
            kb_raise(ctx->prov, KB_R_UNSUPPORTED,
                     "the key manager of %s signs Ed25519 messages of at most "
                     "%u bytes, not %zu",
                     key->uri, key->max_message, tbslen);
            return 0;
        }
        break;
    }
    if (!kb_key_check_use(key, alg, digest))
        return 0;

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_SIGN, 0);
    kb_frame_str(&req, KB_TAG_URI, key->uri);
    kb_frame_str(&req, KB_TAG_ALGORITHM, alg);
    kb_frame_str(&req, KB_TAG_DIGEST, digest);
    if (mgf1 != NULL && strcmp(mgf1, digest) != 0)
        kb_frame_str(&req, KB_TAG_MGF1_DIGEST, mgf1);
    if (salt >= 0)
        kb_frame_u32(&req, KB_TAG_SALT_LENGTH, (uint32_t)salt);
    kb_frame_bytes(&req, KB_TAG_DATA, tbs, tbslen);
    KB_LOG("sign %s %s digest=%s salt=%d, %zu bytes", key->uri, alg,
           digest ? digest : "-", salt, tbslen);
    int ok = kb_prov_call(ctx->prov, &req, key->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    if (r == NULL || r->len == 0 || r->len > max || r->len > sigsize) {
        kb_raise(ctx->prov, r == NULL ? KB_R_PROTOCOL : KB_R_BUFFER_TOO_SMALL,
                 "signature of %u bytes does not fit (%zu)",
                 r != NULL ? r->len : 0, sigsize);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(sig, r->val, r->len);
    *siglen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

static int kb_sig_sign(void *vctx, unsigned char *sig, size_t *siglen,
                       size_t sigsize, const unsigned char *tbs, size_t tbslen)
{
    struct kb_sig_ctx *ctx = vctx;

    if (ctx->key == NULL || ctx->verifying) {
        kb_raise(ctx->prov, KB_R_NOT_INITIALIZED, "sign is not initialized");
        return 0;
    }
    return do_sign(ctx, sig, siglen, sigsize, tbs, tbslen);
}

/* ---- verification, delegated to the public half ------------------------- */

static int do_verify(struct kb_sig_ctx *ctx, const unsigned char *sig,
                     size_t siglen, const unsigned char *tbs, size_t tbslen)
{
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(
        ctx->prov->libctx, ctx->key->pub, KB_PROPQ_OTHERS);
    int ok =
        pctx != NULL && EVP_PKEY_verify_init(pctx) > 0 &&
        (ctx->md == NULL || EVP_PKEY_CTX_set_signature_md(pctx, ctx->md) > 0);
    if (ok && ctx->type == KB_KEY_RSA) {
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, ctx->pad) > 0;
        if (ok && ctx->pad == RSA_PKCS1_PSS_PADDING) {
            ok = EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, ctx->saltlen) > 0 &&
                 (ctx->mgf1 == NULL ||
                  EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, ctx->mgf1) > 0);
        }
    }
    int r = ok ? EVP_PKEY_verify(pctx, sig, siglen, tbs, tbslen) : 0;
    EVP_PKEY_CTX_free(pctx);
    return r;
}

static int kb_sig_verify(void *vctx, const unsigned char *sig, size_t siglen,
                         const unsigned char *tbs, size_t tbslen)
{
    struct kb_sig_ctx *ctx = vctx;
    if (ctx->key == NULL)
        return 0;
    return do_verify(ctx, sig, siglen, tbs, tbslen);
}

/* ---- digest-sign and digest-verify: hash here, sign there --------------- */

static int digest_init(struct kb_sig_ctx *ctx, const char *mdname,
                       void *provkey, int verifying, const OSSL_PARAM params[])
{
    if (!sig_init(ctx, provkey, verifying, NULL))
        return 0;
    if (mdname == NULL || mdname[0] == '\0') {
        if (ctx->md == NULL && !set_md(ctx, "SHA2-256"))
            return 0;
    } else if (!set_md(ctx, mdname)) {
        return 0;
    }
    if (!kb_sig_set_ctx_params(ctx, params))
        return 0;
    ctx->mdctx = EVP_MD_CTX_new();
    if (ctx->mdctx == NULL || !EVP_DigestInit_ex2(ctx->mdctx, ctx->md, NULL)) {
        EVP_MD_CTX_free(ctx->mdctx);
        ctx->mdctx = NULL;
        return 0;
    }
    return 1;
}

static int kb_sig_digest_sign_init(void *vctx, const char *mdname,
                                   void *provkey, const OSSL_PARAM params[])
{
    return digest_init(vctx, mdname, provkey, 0, params);
}

static int kb_sig_digest_verify_init(void *vctx, const char *mdname,
                                     void *provkey, const OSSL_PARAM params[])
{
    return digest_init(vctx, mdname, provkey, 1, params);
}

static int kb_sig_digest_update(void *vctx, const unsigned char *data,
                                size_t datalen)
{
    struct kb_sig_ctx *ctx = vctx;
    if (ctx->mdctx == NULL)
        return 0;
    return EVP_DigestUpdate(ctx->mdctx, data, datalen);
}

static int kb_sig_digest_sign_final(void *vctx, unsigned char *sig,
                                    size_t *siglen, size_t sigsize)
{
    struct kb_sig_ctx *ctx = vctx;
    unsigned char dgst[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;

    if (ctx->mdctx == NULL || ctx->verifying)
        return 0;
    if (sig == NULL) /* a size query must not finish the hash */
        return do_sign(ctx, NULL, siglen, 0, NULL, 0);
    if (!EVP_DigestFinal_ex(ctx->mdctx, dgst, &dlen))
        return 0;
    return do_sign(ctx, sig, siglen, sigsize, dgst, dlen);
}

static int kb_sig_digest_verify_final(void *vctx, const unsigned char *sig,
                                      size_t siglen)
{
    struct kb_sig_ctx *ctx = vctx;
    unsigned char dgst[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;

    if (ctx->mdctx == NULL || !EVP_DigestFinal_ex(ctx->mdctx, dgst, &dlen))
        return 0;
    return do_verify(ctx, sig, siglen, dgst, dlen);
}

/* ---- Ed25519: one shot over the whole message --------------------------- */

static int kb_ed_digest_sign_init(void *vctx, const char *mdname, void *provkey,
                                  const OSSL_PARAM params[])
{
    struct kb_sig_ctx *ctx = vctx;
    return sig_init(ctx, provkey, 0, params) && set_md(ctx, mdname);
}

static int kb_ed_digest_verify_init(void *vctx, const char *mdname,
                                    void *provkey, const OSSL_PARAM params[])
{
    struct kb_sig_ctx *ctx = vctx;
    return sig_init(ctx, provkey, 1, params) && set_md(ctx, mdname);
}

static int kb_ed_digest_sign(void *vctx, unsigned char *sig, size_t *siglen,
                             size_t sigsize, const unsigned char *tbs,
                             size_t tbslen)
{
    struct kb_sig_ctx *ctx = vctx;
    if (ctx->key == NULL || ctx->verifying)
        return 0;
    return do_sign(ctx, sig, siglen, sigsize, tbs, tbslen);
}

static int kb_ed_digest_verify(void *vctx, const unsigned char *sig,
                               size_t siglen, const unsigned char *tbs,
                               size_t tbslen)
{
    struct kb_sig_ctx *ctx = vctx;
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int r = mctx != NULL &&
            EVP_DigestVerifyInit_ex(mctx, NULL, NULL, ctx->prov->libctx,
                                    KB_PROPQ_OTHERS, ctx->key->pub, NULL) > 0 &&
            EVP_DigestVerify(mctx, sig, siglen, tbs, tbslen) > 0;
    EVP_MD_CTX_free(mctx);
    return r;
}

/* ---- dispatch tables ---------------------------------------------------- */

#define KB_SIG_COMMON                                                          \
    {OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))kb_sig_freectx},             \
        {OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))kb_sig_dupctx},           \
        {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS,                                   \
         (void (*)(void))kb_sig_get_ctx_params},                               \
    {                                                                          \
        OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS,                                    \
            (void (*)(void))kb_sig_set_ctx_params                              \
    }

#define KB_SIG_DIGEST                                                          \
    {OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))kb_sig_sign_init},         \
        {OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))kb_sig_sign},               \
        {OSSL_FUNC_SIGNATURE_VERIFY_INIT, (void (*)(void))kb_sig_verify_init}, \
        {OSSL_FUNC_SIGNATURE_VERIFY, (void (*)(void))kb_sig_verify},           \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT,                                 \
         (void (*)(void))kb_sig_digest_sign_init},                             \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE,                               \
         (void (*)(void))kb_sig_digest_update},                                \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL,                                \
         (void (*)(void))kb_sig_digest_sign_final},                            \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT,                               \
         (void (*)(void))kb_sig_digest_verify_init},                           \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE,                             \
         (void (*)(void))kb_sig_digest_update},                                \
    {                                                                          \
        OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL,                               \
            (void (*)(void))kb_sig_digest_verify_final                         \
    }

const OSSL_DISPATCH kb_rsa_signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))kb_rsa_sig_newctx},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS,
     (void (*)(void))kb_rsa_sig_gettable},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS,
     (void (*)(void))kb_rsa_sig_settable},
    KB_SIG_DIGEST,
    KB_SIG_COMMON,
    {0, NULL},
};

const OSSL_DISPATCH kb_ecdsa_signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))kb_ecdsa_newctx},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS,
     (void (*)(void))kb_ecdsa_gettable},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS,
     (void (*)(void))kb_ecdsa_settable},
    KB_SIG_DIGEST,
    KB_SIG_COMMON,
    {0, NULL},
};

const OSSL_DISPATCH kb_ed25519_signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))kb_ed25519_sig_newctx},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS,
     (void (*)(void))kb_ed25519_sig_gettable},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS,
     (void (*)(void))kb_ed25519_sig_settable},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT,
     (void (*)(void))kb_ed_digest_sign_init},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))kb_ed_digest_sign},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT,
     (void (*)(void))kb_ed_digest_verify_init},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY, (void (*)(void))kb_ed_digest_verify},
    KB_SIG_COMMON,
    {0, NULL},
};
