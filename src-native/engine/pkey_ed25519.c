/*
 * The engine's EVP_PKEY_METHOD for Ed25519: a one-shot digestsign that sends
 * the whole message (Ed25519 hashes inside the signature scheme, so nothing
 * can be hashed here). A copy of OpenSSL's own Ed25519 method, so control
 * commands and keys that are not ours keep OpenSSL's behaviour.
 */
#include "engine.h"

#include <pthread.h>
#include <string.h>

#include "../provider/errors.h"
#include "log.h"

#define ED25519_SIG_LEN 64

typedef int kb_digestsign_fn(EVP_MD_CTX *ctx, unsigned char *sig,
                             size_t *siglen, const unsigned char *tbs,
                             size_t tbslen);
typedef int kb_digestverify_fn(EVP_MD_CTX *ctx, const unsigned char *sig,
                               size_t siglen, const unsigned char *tbs,
                               size_t tbslen);

static kb_digestsign_fn kb_ed25519_digestsign;
static kb_digestverify_fn kb_ed25519_digestverify;

static kb_digestsign_fn *orig_digestsign;
static kb_digestverify_fn *orig_digestverify;

static const struct kb_ekey *md_ctx_key(EVP_MD_CTX *ctx)
{
    EVP_PKEY *pk = EVP_PKEY_CTX_get0_pkey(EVP_MD_CTX_get_pkey_ctx(ctx));
    return pk != NULL ? kb_ekey_of_pkey(pk) : NULL;
}

static int kb_ed25519_digestsign(EVP_MD_CTX *ctx, unsigned char *sig,
                                 size_t *siglen, const unsigned char *tbs,
                                 size_t tbslen)
{
    const struct kb_ekey *k = md_ctx_key(ctx);
    if (k == NULL)
        return orig_digestsign(ctx, sig, siglen, tbs, tbslen);
    if (sig == NULL) {
        *siglen = ED25519_SIG_LEN;
        return 1;
    }
    if (*siglen < ED25519_SIG_LEN) {
        kb_eng_raise(KB_R_BUFFER_TOO_SMALL,
                     "an Ed25519 signature needs %d bytes, not %zu",
                     ED25519_SIG_LEN, *siglen);
        return 0;
    }
    if (k->max_message != 0 && tbslen > k->max_message) {
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "the key manager of %s signs Ed25519 messages of at most "
                     "%u bytes, not %zu",
                     k->uri, k->max_message, tbslen);
        return 0;
    }
    if (!kb_ekey_check_use(k, "ed25519", NULL))
        return 0;

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_SIGN, 0);
    kb_frame_str(&req, KB_TAG_URI, k->uri);
    kb_frame_str(&req, KB_TAG_ALGORITHM, "ed25519");
    kb_frame_bytes(&req, KB_TAG_DATA, tbs, tbslen);
    KB_LOG("engine sign %s ed25519, %zu bytes", k->uri, tbslen);
    int ok = kb_eng_call(&req, k->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return 0;
    const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
    if (r == NULL || r->len != ED25519_SIG_LEN) {
        kb_eng_raise(KB_R_PROTOCOL,
                     "the Ed25519 signature has %u bytes, not %d",
                     r != NULL ? r->len : 0, ED25519_SIG_LEN);
        kb_wire_msg_free(reply);
        return 0;
    }
    memcpy(sig, r->val, r->len);
    *siglen = r->len;
    kb_wire_msg_free(reply);
    return 1;
}

static int kb_ed25519_digestverify(EVP_MD_CTX *ctx, const unsigned char *sig,
                                   size_t siglen, const unsigned char *tbs,
                                   size_t tbslen)
{
    const struct kb_ekey *k = md_ctx_key(ctx);
    if (k == NULL || !kb_eng_remote_pubkey())
        return orig_digestverify(ctx, sig, siglen, tbs, tbslen);
    /* REMOTE_PUBKEY: VERIFY by the key manager; 0 for a bad signature */
    const struct kb_eng_sig_params p = {.alg = "ed25519", .salt = -1};
    return kb_eng_remote_verify(k, &p, tbs, tbslen, sig, siglen);
}

static pthread_once_t orig_once = PTHREAD_ONCE_INIT;

static void load_orig(void)
{
    const EVP_PKEY_METHOD *orig = EVP_PKEY_meth_find(EVP_PKEY_ED25519);
    if (orig == NULL)
        return;
    EVP_PKEY_meth_get_digestsign(orig, &orig_digestsign);
    EVP_PKEY_meth_get_digestverify(orig, &orig_digestverify);
}

EVP_PKEY_METHOD *kb_pkey_ed25519_new(void)
{
    const EVP_PKEY_METHOD *orig = EVP_PKEY_meth_find(EVP_PKEY_ED25519);

    pthread_once(&orig_once, load_orig);
    if (orig == NULL || orig_digestsign == NULL || orig_digestverify == NULL)
        return NULL;

    /* SIGCTX_CUSTOM: EVP must not hash; digestsign sees the message */
    EVP_PKEY_METHOD *meth =
        EVP_PKEY_meth_new(EVP_PKEY_ED25519, EVP_PKEY_FLAG_SIGCTX_CUSTOM);
    if (meth == NULL)
        return NULL;
    EVP_PKEY_meth_copy(meth, orig);
    EVP_PKEY_meth_set_digestsign(meth, kb_ed25519_digestsign);
    EVP_PKEY_meth_set_digestverify(meth, kb_ed25519_digestverify);
    return meth;
}
