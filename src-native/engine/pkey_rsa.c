/*
 * The engine's EVP_PKEY_METHOD for RSA.
 *
 * Why an EVP_PKEY_METHOD and not an RSA_METHOD: through RSA_METHOD, TLS 1.3
 * asks for a raw RSA operation (RSA_NO_PADDING, PSS encoded by OpenSSL),
 * which no key manager offers. Here the sign hook receives the digest and
 * the padding, salt length and MGF1 digest, which is what SIGN carries.
 *
 * The method is a copy of OpenSSL's own RSA method with sign, decrypt,
 * verify and encrypt wrapped: control commands, parameter bookkeeping and
 * every key that is not ours stay with OpenSSL's code. That matters because
 * `openssl -engine` makes this method the default for all RSA keys.
 */
#include "engine.h"

#include <openssl/rsa.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../provider/errors.h"
#include "log.h"

typedef int kb_pkey_init_fn(EVP_PKEY_CTX *ctx);
typedef int kb_pkey_sign_fn(EVP_PKEY_CTX *ctx, unsigned char *sig,
                            size_t *siglen, const unsigned char *tbs,
                            size_t tbslen);
typedef int kb_pkey_verify_fn(EVP_PKEY_CTX *ctx, const unsigned char *sig,
                              size_t siglen, const unsigned char *tbs,
                              size_t tbslen);
typedef int kb_pkey_cipher_fn(EVP_PKEY_CTX *ctx, unsigned char *out,
                              size_t *outlen, const unsigned char *in,
                              size_t inlen);

static kb_pkey_sign_fn kb_rsa_sign;
static kb_pkey_verify_fn kb_rsa_verify;
static kb_pkey_cipher_fn kb_rsa_encrypt, kb_rsa_decrypt;

/* OpenSSL's RSA method: what every operation we do not handle falls to */
static kb_pkey_init_fn *orig_sign_init, *orig_verify_init, *orig_encrypt_init,
    *orig_decrypt_init;
static kb_pkey_sign_fn *orig_sign;
static kb_pkey_verify_fn *orig_verify;
static kb_pkey_cipher_fn *orig_encrypt, *orig_decrypt;

/* For error messages: OpenSSL's name of an RSA padding mode. */
static const char *pad_name(int pad)
{
    switch (pad) {
    case RSA_PKCS1_PADDING:
        return "pkcs1";
    case RSA_NO_PADDING:
        return "none (raw RSA)";
    case RSA_PKCS1_OAEP_PADDING:
        return "oaep";
    case RSA_X931_PADDING:
        return "x931";
    case RSA_PKCS1_PSS_PADDING:
        return "pss";
    default:
        return "unknown";
    }
}

/* Our key behind |ctx|, or NULL for anybody else's (provided keys included). */
static const struct kb_ekey *ctx_key(EVP_PKEY_CTX *ctx)
{
    EVP_PKEY *pk = EVP_PKEY_CTX_get0_pkey(ctx);

    if (pk == NULL || EVP_PKEY_get0_provider(pk) != NULL ||
        EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA)
        return NULL;
    return kb_ekey_of_rsa(EVP_PKEY_get0_RSA(pk));
}

/* The wire name of |md|; raises for a digest kmsbridge does not sign. */
static int wire_digest(const EVP_MD *md, const char **out)
{
    *out = NULL;
    if (md == NULL)
        return 1;
    *out = kb_md_nid_wire_name(EVP_MD_get_type(md));
    if (*out == NULL) {
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "digest %s is not supported by kmsbridge (sha1, sha224, "
                     "sha256, sha384, sha512)",
                     EVP_MD_get0_name(md));
        return 0;
    }
    return 1;
}

/*
 * The PSS salt length in bytes, from OpenSSL's conventions: -1 the digest
 * length, -2 (the signing default) and -3 the largest that fits. A backend
 * that fixes the salt to the digest length gets that for -2: verifiers
 * recover the salt length, and TLS 1.3 asks for -1 anyway.
 */
static int resolve_saltlen(const struct kb_ekey *k, EVP_PKEY *pk, int saltlen,
                           int mdsize, int *out)
{
    int bits = EVP_PKEY_get_bits(pk);
    int max = EVP_PKEY_get_size(pk) - mdsize - 2;
    int s;

    if (((bits - 1) & 7) == 0)
        max--;
    switch (saltlen) {
    case RSA_PSS_SALTLEN_DIGEST:
        s = mdsize;
        break;
    case RSA_PSS_SALTLEN_MAX_SIGN:
        s = k->pss_salt_digest ? mdsize : max;
        break;
    case RSA_PSS_SALTLEN_MAX:
        s = max;
        break;
    default:
        s = saltlen;
        break;
    }
    if (s < 0 || s > max) {
        kb_eng_raise(KB_R_BAD_PARAMETER,
                     "PSS salt length %d does not fit a %d-bit key", s, bits);
        return 0;
    }
    if (k->pss_salt_digest && s != mdsize) {
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "the key manager of %s only signs PSS with a salt as long "
                     "as the digest (%d bytes), not %d",
                     k->uri, mdsize, s);
        return 0;
    }
    *out = s;
    return 1;
}

static int kb_rsa_sign(EVP_PKEY_CTX *ctx, unsigned char *sig, size_t *siglen,
                       const unsigned char *tbs, size_t tbslen)
{
    const struct kb_ekey *k = ctx_key(ctx);
    if (k == NULL)
        return orig_sign(ctx, sig, siglen, tbs, tbslen);

    EVP_PKEY *pk = EVP_PKEY_CTX_get0_pkey(ctx);
    size_t size = (size_t)EVP_PKEY_get_size(pk);
    if (sig == NULL) {
        *siglen = size;
        return 1;
    }

    int pad = RSA_PKCS1_PADDING, saltlen = RSA_PSS_SALTLEN_MAX_SIGN, salt = -1;
    const EVP_MD *md = NULL, *mgf1md = NULL;
    const char *alg, *digest, *mgf1 = NULL;
    if (EVP_PKEY_CTX_get_rsa_padding(ctx, &pad) <= 0 ||
        EVP_PKEY_CTX_get_signature_md(ctx, &md) <= 0 ||
        !wire_digest(md, &digest))
        return 0;
    if (md != NULL && tbslen != (size_t)EVP_MD_get_size(md)) {
        kb_eng_raise(KB_R_INVALID_ARGUMENT,
                     "%zu bytes to sign, but a %s digest has %d", tbslen,
                     digest, EVP_MD_get_size(md));
        return 0;
    }
    switch (pad) {
    case RSA_PKCS1_PADDING:
        /* without a digest, DATA is signed as given (no DigestInfo) */
        alg = "rsa-pkcs1";
        break;
    case RSA_PKCS1_PSS_PADDING:
        alg = "rsa-pss";
        if (digest == NULL &&
            (digest = kb_md_wire_name_for_len(tbslen)) == NULL) {
            kb_eng_raise(KB_R_INVALID_ARGUMENT,
                         "PSS needs a digest; %zu bytes is no digest's size",
                         tbslen);
            return 0;
        }
        if (EVP_PKEY_CTX_get_rsa_mgf1_md(ctx, &mgf1md) <= 0 ||
            !wire_digest(mgf1md, &mgf1) ||
            EVP_PKEY_CTX_get_rsa_pss_saltlen(ctx, &saltlen) <= 0 ||
            !resolve_saltlen(k, pk, saltlen, (int)tbslen, &salt))
            return 0;
        break;
    default:
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "RSA signature padding %s: kmsbridge signs PKCS#1 v1.5 "
                     "and PSS; key managers do not offer raw RSA",
                     pad_name(pad));
        return 0;
    }
    if (!kb_ekey_check_use(k, alg, digest))
        return 0;

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_SIGN, 0);
    kb_frame_str(&req, KB_TAG_URI, k->uri);
    kb_frame_str(&req, KB_TAG_ALGORITHM, alg);
    kb_frame_str(&req, KB_TAG_DIGEST, digest);
    if (mgf1 != NULL && digest != NULL && strcmp(mgf1, digest) != 0)
        kb_frame_str(&req, KB_TAG_MGF1_DIGEST, mgf1);
    if (salt >= 0)
        kb_frame_u32(&req, KB_TAG_SALT_LENGTH, (uint32_t)salt);
    kb_frame_bytes(&req, KB_TAG_DATA, tbs, tbslen);
    KB_LOG("engine sign %s %s digest=%s mgf1=%s salt=%d, %zu bytes", k->uri,
           alg, digest ? digest : "-", mgf1 ? mgf1 : "-", salt, tbslen);
    int ok = kb_eng_call(&req, k->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    if (r == NULL || r->len == 0 || r->len > size || r->len > *siglen) {
        kb_eng_raise(r == NULL ? KB_R_PROTOCOL : KB_R_BUFFER_TOO_SMALL,
                     "signature of %u bytes does not fit (%zu)",
                     r != NULL ? r->len : 0, *siglen);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(sig, r->val, r->len);
    *siglen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

/* The padding parameters of an RSA encryption or decryption, in wire terms. */
struct rsa_cipher_params {
    const char *alg;
    const char *digest; /* OAEP only */
    const char *mgf1;
    unsigned char *label;
    int labellen;
};

/*
 * Reads OAEP or PKCS#1 v1.5 parameters from |ctx|; raises and returns 0 for
 * any other padding (|op| names the operation in the message).
 */
static int read_cipher_params(EVP_PKEY_CTX *ctx, const char *op,
                              struct rsa_cipher_params *p)
{
    int pad = RSA_PKCS1_PADDING;
    const EVP_MD *md = NULL, *mgf1md = NULL;

    memset(p, 0, sizeof(*p));
    if (EVP_PKEY_CTX_get_rsa_padding(ctx, &pad) <= 0)
        return 0;
    switch (pad) {
    case RSA_PKCS1_OAEP_PADDING:
        p->alg = "rsa-oaep";
        if (EVP_PKEY_CTX_get_rsa_oaep_md(ctx, &md) <= 0 ||
            EVP_PKEY_CTX_get_rsa_mgf1_md(ctx, &mgf1md) <= 0 ||
            !wire_digest(md, &p->digest) || !wire_digest(mgf1md, &p->mgf1))
            return 0;
        if (p->digest == NULL)
            p->digest = "sha1"; /* OAEP's default, as in OpenSSL */
        p->labellen = EVP_PKEY_CTX_get0_rsa_oaep_label(ctx, &p->label);
        if (p->labellen < 0)
            p->labellen = 0;
        return 1;
    case RSA_PKCS1_PADDING:
        /* the wire names PKCS#1 v1.5 after its decryption, both ways */
        p->alg = "rsa-pkcs1-decrypt";
        return 1;
    default:
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "RSA %s padding %s: kmsbridge does OAEP and PKCS#1 v1.5 "
                     "with the key manager; key managers do not offer raw RSA",
                     op, pad_name(pad));
        return 0;
    }
}

/*
 * DECRYPT by the key manager, or ENCRYPT (REMOTE_PUBKEY): the same request
 * and the same RESULT, in the wire terms of |p|.
 */
static int cipher_call(const struct kb_ekey *k, uint16_t type,
                       const struct rsa_cipher_params *p,
                       const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen)
{
    const char *what = type == KB_MSG_DECRYPT ? "plaintext" : "ciphertext";

    if (!kb_ekey_check_use(k, p->alg, NULL))
        return 0;
    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, type, 0);
    kb_frame_str(&req, KB_TAG_URI, k->uri);
    kb_frame_str(&req, KB_TAG_ALGORITHM, p->alg);
    kb_frame_str(&req, KB_TAG_DIGEST, p->digest);
    if (p->mgf1 != NULL && p->digest != NULL && strcmp(p->mgf1, p->digest) != 0)
        kb_frame_str(&req, KB_TAG_MGF1_DIGEST, p->mgf1);
    if (p->labellen > 0)
        kb_frame_bytes(&req, KB_TAG_LABEL, p->label, (size_t)p->labellen);
    kb_frame_bytes(&req, KB_TAG_DATA, in, inlen);
    KB_LOG("engine %s %s %s digest=%s, %zu bytes", kb_wire_type_name(type),
           k->uri, p->alg, p->digest ? p->digest : "-", inlen);
    int ok = kb_eng_call(&req, k->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    /* an empty plaintext is a plaintext; an empty ciphertext is not */
    int bad = r == NULL || (r->len == 0 && type == KB_MSG_ENCRYPT);
    if (bad || r->len > *outlen) {
        kb_eng_raise(bad ? KB_R_PROTOCOL : KB_R_BUFFER_TOO_SMALL,
                     "%s of %u bytes from the key manager for %s does not "
                     "fit (%zu)",
                     what, r != NULL ? r->len : 0, k->uri, *outlen);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(out, r->val, r->len);
    *outlen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

static int kb_rsa_decrypt(EVP_PKEY_CTX *ctx, unsigned char *out, size_t *outlen,
                          const unsigned char *in, size_t inlen)
{
    const struct kb_ekey *k = ctx_key(ctx);
    if (k == NULL)
        return orig_decrypt(ctx, out, outlen, in, inlen);

    size_t size = (size_t)EVP_PKEY_get_size(EVP_PKEY_CTX_get0_pkey(ctx));
    if (out == NULL) {
        *outlen = size;
        return 1;
    }

    struct rsa_cipher_params p;
    if (!read_cipher_params(ctx, "decryption", &p))
        return 0;
    return cipher_call(k, KB_MSG_DECRYPT, &p, in, inlen, out, outlen);
}

/*
 * Public-key operations run locally, on the real public key, unless
 * REMOTE_PUBKEY asks for them to reach the key manager (VERIFY, ENCRYPT).
 */
static int kb_rsa_verify(EVP_PKEY_CTX *ctx, const unsigned char *sig,
                         size_t siglen, const unsigned char *tbs, size_t tbslen)
{
    const struct kb_ekey *k = ctx_key(ctx);
    if (k == NULL || !kb_eng_remote_pubkey())
        return orig_verify(ctx, sig, siglen, tbs, tbslen);

    int pad = RSA_PKCS1_PADDING, saltlen = RSA_PSS_SALTLEN_AUTO;
    const EVP_MD *md = NULL, *mgf1md = NULL;
    struct kb_eng_sig_params p = {.salt = -1};
    if (EVP_PKEY_CTX_get_rsa_padding(ctx, &pad) <= 0 ||
        EVP_PKEY_CTX_get_signature_md(ctx, &md) <= 0 ||
        !wire_digest(md, &p.digest))
        return -1;
    if (md != NULL && tbslen != (size_t)EVP_MD_get_size(md)) {
        kb_eng_raise(KB_R_INVALID_ARGUMENT,
                     "%zu bytes to verify, but a %s digest has %d", tbslen,
                     p.digest, EVP_MD_get_size(md));
        return -1;
    }
    switch (pad) {
    case RSA_PKCS1_PADDING:
        p.alg = "rsa-pkcs1";
        break;
    case RSA_PKCS1_PSS_PADDING:
        p.alg = "rsa-pss";
        if (p.digest == NULL &&
            (p.digest = kb_md_wire_name_for_len(tbslen)) == NULL) {
            kb_eng_raise(KB_R_INVALID_ARGUMENT,
                         "PSS needs a digest; %zu bytes is no digest's size",
                         tbslen);
            return -1;
        }
        if (EVP_PKEY_CTX_get_rsa_mgf1_md(ctx, &mgf1md) <= 0 ||
            !wire_digest(mgf1md, &p.mgf1) ||
            EVP_PKEY_CTX_get_rsa_pss_saltlen(ctx, &saltlen) <= 0)
            return -1;
        /* OpenSSL's conventions: -1 the digest length, -3 the largest */
        if (saltlen == RSA_PSS_SALTLEN_DIGEST) {
            p.salt = (int)tbslen;
        } else if (saltlen == RSA_PSS_SALTLEN_MAX) {
            EVP_PKEY *pk = EVP_PKEY_CTX_get0_pkey(ctx);
            p.salt = EVP_PKEY_get_size(pk) - (int)tbslen - 2 -
                     (((EVP_PKEY_get_bits(pk) - 1) & 7) == 0);
        } else if (saltlen >= 0) {
            p.salt = saltlen;
        } /* else auto: any salt length, recovered by the verifier */
        break;
    default:
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "RSA signature padding %s: kmsbridge verifies PKCS#1 "
                     "v1.5 and PSS with the key manager",
                     pad_name(pad));
        return -1;
    }
    return kb_eng_remote_verify(k, &p, tbs, tbslen, sig, siglen);
}

static int kb_rsa_encrypt(EVP_PKEY_CTX *ctx, unsigned char *out, size_t *outlen,
                          const unsigned char *in, size_t inlen)
{
    const struct kb_ekey *k = ctx_key(ctx);
    if (k == NULL || !kb_eng_remote_pubkey())
        return orig_encrypt(ctx, out, outlen, in, inlen);

    size_t size = (size_t)EVP_PKEY_get_size(EVP_PKEY_CTX_get0_pkey(ctx));
    if (out == NULL) {
        *outlen = size;
        return 1;
    }

    struct rsa_cipher_params p;
    if (!read_cipher_params(ctx, "encryption", &p))
        return 0;
    return cipher_call(k, KB_MSG_ENCRYPT, &p, in, inlen, out, outlen);
}

static pthread_once_t orig_once = PTHREAD_ONCE_INIT;

static void load_orig(void)
{
    const EVP_PKEY_METHOD *orig = EVP_PKEY_meth_find(EVP_PKEY_RSA);
    if (orig == NULL)
        return;
    EVP_PKEY_meth_get_sign(orig, &orig_sign_init, &orig_sign);
    EVP_PKEY_meth_get_verify(orig, &orig_verify_init, &orig_verify);
    EVP_PKEY_meth_get_encrypt(orig, &orig_encrypt_init, &orig_encrypt);
    EVP_PKEY_meth_get_decrypt(orig, &orig_decrypt_init, &orig_decrypt);
}

EVP_PKEY_METHOD *kb_pkey_rsa_new(void)
{
    const EVP_PKEY_METHOD *orig = EVP_PKEY_meth_find(EVP_PKEY_RSA);

    pthread_once(&orig_once, load_orig);
    if (orig == NULL || orig_sign == NULL || orig_verify == NULL ||
        orig_encrypt == NULL || orig_decrypt == NULL)
        return NULL;

    /* AUTOARGLEN: EVP answers size queries and checks output buffers */
    EVP_PKEY_METHOD *meth =
        EVP_PKEY_meth_new(EVP_PKEY_RSA, EVP_PKEY_FLAG_AUTOARGLEN);
    if (meth == NULL)
        return NULL;
    EVP_PKEY_meth_copy(meth, orig);
    EVP_PKEY_meth_set_sign(meth, orig_sign_init, kb_rsa_sign);
    EVP_PKEY_meth_set_verify(meth, orig_verify_init, kb_rsa_verify);
    EVP_PKEY_meth_set_encrypt(meth, orig_encrypt_init, kb_rsa_encrypt);
    EVP_PKEY_meth_set_decrypt(meth, orig_decrypt_init, kb_rsa_decrypt);
    return meth;
}
