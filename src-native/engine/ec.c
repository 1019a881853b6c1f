/*
 * The engine's EC_KEY_METHOD: ECDSA signatures and ECDH by the key manager.
 *
 * A copy of OpenSSL's own method with sign, sign_sig, compute_key and verify
 * wrapped; keys that are not ours go to OpenSSL's code, since `-engine`
 * makes this the default method of every EC_KEY in the process.
 *
 * The sign hook sees only the digest bytes, not the digest's name: the name
 * SIGN carries (for policy such as SHA-1 refusal) follows from the length.
 */
#include "engine.h"

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <string.h>

#include "../provider/errors.h"
#include "log.h"

typedef int kb_ec_sign_fn(int type, const unsigned char *dgst, int dlen,
                          unsigned char *sig, unsigned int *siglen,
                          const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey);
typedef int kb_ec_sign_setup_fn(EC_KEY *eckey, BN_CTX *ctx_in, BIGNUM **kinvp,
                                BIGNUM **rp);
typedef ECDSA_SIG *kb_ec_sign_sig_fn(const unsigned char *dgst, int dgst_len,
                                     const BIGNUM *in_kinv, const BIGNUM *in_r,
                                     EC_KEY *eckey);
typedef int kb_ec_verify_fn(int type, const unsigned char *dgst, int dgst_len,
                            const unsigned char *sigbuf, int sig_len,
                            EC_KEY *eckey);
typedef int kb_ec_verify_sig_fn(const unsigned char *dgst, int dgst_len,
                                const ECDSA_SIG *sig, EC_KEY *eckey);
typedef int kb_ec_compute_key_fn(unsigned char **psec, size_t *pseclen,
                                 const EC_POINT *pub_key, const EC_KEY *ecdh);

static kb_ec_sign_fn kb_ec_sign;
static kb_ec_sign_sig_fn kb_ec_sign_sig;
static kb_ec_verify_fn kb_ec_verify;
static kb_ec_verify_sig_fn kb_ec_verify_sig;
static kb_ec_compute_key_fn kb_ec_compute_key;

static EC_KEY_METHOD *meth;
static kb_ec_sign_fn *orig_sign;
static kb_ec_sign_setup_fn *orig_sign_setup;
static kb_ec_sign_sig_fn *orig_sign_sig;
static kb_ec_verify_fn *orig_verify;
static kb_ec_verify_sig_fn *orig_verify_sig;
static kb_ec_compute_key_fn *orig_compute_key;

/* SIGN for |k|: a DER ECDSA-Sig-Value into |sig| (|sigsize| bytes). */
static int ecdsa_sign(const struct kb_ekey *k, const unsigned char *dgst,
                      int dlen, unsigned char *sig, unsigned int *siglen,
                      size_t sigsize)
{
    const char *digest = kb_md_wire_name_for_len((size_t)dlen);

    if (digest == NULL) {
        kb_eng_raise(KB_R_INVALID_ARGUMENT,
                     "ECDSA signs a digest; %d bytes is no digest's size "
                     "(sha1, sha224, sha256, sha384, sha512)",
                     dlen);
        return 0;
    }
    if (!kb_ekey_check_use(k, "ecdsa", digest))
        return 0;

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_SIGN, 0);
    kb_frame_str(&req, KB_TAG_URI, k->uri);
    kb_frame_str(&req, KB_TAG_ALGORITHM, "ecdsa");
    kb_frame_str(&req, KB_TAG_DIGEST, digest);
    kb_frame_bytes(&req, KB_TAG_DATA, dgst, (size_t)dlen);
    KB_LOG("engine sign %s ecdsa digest=%s, %d bytes", k->uri, digest, dlen);
    int ok = kb_eng_call(&req, k->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    if (r == NULL || r->len == 0 || r->len > sigsize) {
        kb_eng_raise(r == NULL ? KB_R_PROTOCOL : KB_R_BUFFER_TOO_SMALL,
                     "ECDSA signature of %u bytes does not fit (%zu)",
                     r != NULL ? r->len : 0, sigsize);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(sig, r->val, r->len);
    *siglen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

static int kb_ec_sign(int type, const unsigned char *dgst, int dlen,
                      unsigned char *sig, unsigned int *siglen,
                      const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
{
    const struct kb_ekey *k = kb_ekey_of_ec(eckey);
    if (k == NULL)
        return orig_sign(type, dgst, dlen, sig, siglen, kinv, r, eckey);
    /* ECDSA_sign's contract: |sig| holds ECDSA_size(eckey) bytes */
    return ecdsa_sign(k, dgst, dlen, sig, siglen, (size_t)ECDSA_size(eckey));
}

static ECDSA_SIG *kb_ec_sign_sig(const unsigned char *dgst, int dgst_len,
                                 const BIGNUM *in_kinv, const BIGNUM *in_r,
                                 EC_KEY *eckey)
{
    const struct kb_ekey *k = kb_ekey_of_ec(eckey);
    if (k == NULL)
        return orig_sign_sig(dgst, dgst_len, in_kinv, in_r, eckey);

    unsigned char der[256]; /* a P-521 signature is at most 139 bytes */
    unsigned int len = 0;
    if (!ecdsa_sign(k, dgst, dgst_len, der, &len, sizeof(der)))
        return NULL;
    const unsigned char *p = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)len);
    if (s == NULL)
        kb_eng_raise(KB_R_PROTOCOL,
                     "the key manager's ECDSA signature for %s "
                     "is not DER",
                     k->uri);
    return s;
}

/* VERIFY for |k| (REMOTE_PUBKEY): 1 valid, 0 not, -1 error. */
static int ecdsa_verify(const struct kb_ekey *k, const unsigned char *dgst,
                        int dlen, const unsigned char *sig, size_t siglen)
{
    struct kb_eng_sig_params p = {.alg = "ecdsa", .salt = -1};

    p.digest = dlen > 0 ? kb_md_wire_name_for_len((size_t)dlen) : NULL;
    if (p.digest == NULL) {
        kb_eng_raise(KB_R_INVALID_ARGUMENT,
                     "ECDSA verifies a digest; %d bytes is no digest's size "
                     "(sha1, sha224, sha256, sha384, sha512)",
                     dlen);
        return -1;
    }
    return kb_eng_remote_verify(k, &p, dgst, (size_t)dlen, sig, siglen);
}

static int kb_ec_verify(int type, const unsigned char *dgst, int dgst_len,
                        const unsigned char *sigbuf, int sig_len, EC_KEY *eckey)
{
    const struct kb_ekey *k = kb_ekey_of_ec(eckey);
    if (k == NULL || !kb_eng_remote_pubkey())
        return orig_verify(type, dgst, dgst_len, sigbuf, sig_len, eckey);
    if (sig_len < 0)
        return 0;
    return ecdsa_verify(k, dgst, dgst_len, sigbuf, (size_t)sig_len);
}

static int kb_ec_verify_sig(const unsigned char *dgst, int dgst_len,
                            const ECDSA_SIG *sig, EC_KEY *eckey)
{
    const struct kb_ekey *k = kb_ekey_of_ec(eckey);
    if (k == NULL || !kb_eng_remote_pubkey())
        return orig_verify_sig(dgst, dgst_len, sig, eckey);

    unsigned char *der = NULL;
    int len = i2d_ECDSA_SIG(sig, &der);
    if (len <= 0) {
        kb_eng_raise(KB_R_INVALID_ARGUMENT,
                     "cannot encode the ECDSA signature to verify with %s",
                     k->uri);
        return -1;
    }
    int r = ecdsa_verify(k, dgst, dgst_len, der, (size_t)len);
    OPENSSL_free(der);
    return r;
}

/* ECDH: the peer's public point goes out as a SubjectPublicKeyInfo. */
static int kb_ec_compute_key(unsigned char **psec, size_t *pseclen,
                             const EC_POINT *pub_key, const EC_KEY *ecdh)
{
    const struct kb_ekey *k = kb_ekey_of_ec(ecdh);
    if (k == NULL)
        return orig_compute_key(psec, pseclen, pub_key, ecdh);
    if (!kb_ekey_check_use(k, "ecdh", NULL))
        return 0;

    /* only encoded, never used: whichever EC method it gets is fine */
    EC_KEY *peer = EC_KEY_new();
    unsigned char *spki = NULL;
    int spki_len = -1;
    if (peer != NULL && EC_KEY_set_group(peer, EC_KEY_get0_group(ecdh)) &&
        EC_KEY_set_public_key(peer, pub_key)) {
        EC_KEY_set_asn1_flag(peer, OPENSSL_EC_NAMED_CURVE);
        spki_len = i2d_EC_PUBKEY(peer, &spki);
    }
    EC_KEY_free(peer);
    if (spki_len <= 0) {
        kb_eng_raise(KB_R_INVALID_ARGUMENT,
                     "cannot encode the ECDH peer key for %s", k->uri);
        return 0;
    }

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_DERIVE, 0);
    kb_frame_str(&req, KB_TAG_URI, k->uri);
    kb_frame_bytes(&req, KB_TAG_PEER_KEY, spki, (size_t)spki_len);
    OPENSSL_free(spki);
    KB_LOG("engine derive %s", k->uri);
    int ok = kb_eng_call(&req, k->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    unsigned char *sec =
        r != NULL && r->len > 0 ? OPENSSL_malloc(r->len) : NULL;
    if (sec == NULL) {
        kb_eng_raise(r == NULL ? KB_R_PROTOCOL : KB_R_NOMEM,
                     "no shared secret from the key manager for %s", k->uri);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(sec, r->val, r->len);
    *psec = sec;
    *pseclen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

int kb_ec_setup(void)
{
    if (meth != NULL)
        return 1;
    meth = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    if (meth == NULL)
        return 0;
    EC_KEY_METHOD_get_sign(meth, &orig_sign, &orig_sign_setup, &orig_sign_sig);
    EC_KEY_METHOD_get_verify(meth, &orig_verify, &orig_verify_sig);
    EC_KEY_METHOD_get_compute_key(meth, &orig_compute_key);
    if (orig_sign == NULL || orig_sign_sig == NULL || orig_verify == NULL ||
        orig_verify_sig == NULL || orig_compute_key == NULL) {
        kb_ec_teardown();
        return 0;
    }
    EC_KEY_METHOD_set_sign(meth, kb_ec_sign, orig_sign_setup, kb_ec_sign_sig);
    EC_KEY_METHOD_set_verify(meth, kb_ec_verify, kb_ec_verify_sig);
    EC_KEY_METHOD_set_compute_key(meth, kb_ec_compute_key);
    return 1;
}

void kb_ec_teardown(void)
{
    EC_KEY_METHOD_free(meth);
    meth = NULL;
}

EC_KEY_METHOD *kb_ec_method(void)
{
    return meth;
}
