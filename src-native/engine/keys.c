/*
 * ENGINE_load_private_key / ENGINE_load_public_key for kms: URIs.
 *
 * A key is resolved with DESCRIBE and becomes an ordinary legacy EVP_PKEY
 * whose public half is real (so certificates match it and verification runs
 * locally) and whose private operations reach our methods:
 *   RSA      the EVP_PKEY is tied to the engine's EVP_PKEY_METHOD
 *            (EVP_PKEY_set1_engine), which sees digest, padding, salt length
 *            and MGF1 digest: TLS 1.3 RSA-PSS never asks for raw RSA.
 *   EC       the EC_KEY carries the engine's EC_KEY_METHOD.
 *   Ed25519  the EVP_PKEY is created with the engine, whose EVP_PKEY_METHOD
 *            signs the whole message.
 * The key's URI and policy ride along as ex_data, which is how our methods
 * tell our keys from everybody else's.
 */
#include "engine.h"
#include "names.h"

#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

#include "../provider/errors.h"
#include "keyref.h"
#include "log.h"

static int rsa_idx = -1, ec_idx = -1, pkey_idx = -1;

static void ekey_free(struct kb_ekey *k)
{
    if (k == NULL)
        return;
    free(k->uri);
    free(k->algorithms);
    free(k->mandatory_digest);
    free(k);
}

static char *strdup_or_null(const char *s, int *failed)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *failed = 1;
    return d;
}

static struct kb_ekey *ekey_dup(const struct kb_ekey *k)
{
    struct kb_ekey *d = malloc(sizeof(*d));
    int failed = 0;

    if (d == NULL)
        return NULL;
    *d = *k;
    d->uri = strdup_or_null(k->uri, &failed);
    d->algorithms = strdup_or_null(k->algorithms, &failed);
    d->mandatory_digest = strdup_or_null(k->mandatory_digest, &failed);
    if (failed) {
        ekey_free(d);
        return NULL;
    }
    return d;
}

static void ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                    long argl, void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    ekey_free(ptr);
}

/* A copied key (RSA_dup, EVP_PKEY_dup) stays ours, with its own copy. */
static int ex_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d,
                  int idx, long argl, void *argp)
{
    struct kb_ekey **slot = (struct kb_ekey **)from_d;

    (void)to;
    (void)from;
    (void)idx;
    (void)argl;
    (void)argp;
    if (*slot != NULL)
        *slot = ekey_dup(*slot);
    return 1;
}

int kb_ekey_init(void)
{
    if (rsa_idx < 0)
        rsa_idx = CRYPTO_get_ex_new_index(
            CRYPTO_EX_INDEX_RSA, 0, "kmsbridge key", NULL, ex_dup, ex_free);
    if (ec_idx < 0)
        ec_idx = CRYPTO_get_ex_new_index(
            CRYPTO_EX_INDEX_EC_KEY, 0, "kmsbridge key", NULL, ex_dup, ex_free);
    if (pkey_idx < 0)
        pkey_idx =
            CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_EVP_PKEY, 0,
                                    "kmsbridge key", NULL, ex_dup, ex_free);
    return rsa_idx >= 0 && ec_idx >= 0 && pkey_idx >= 0;
}

/*
 * OpenSSL calls an index's callbacks on every RSA, EC_KEY and EVP_PKEY it
 * frees, ours or not; once the dynamic engine's library is unloaded they
 * would point nowhere. Every key of ours holds a reference to the engine, so
 * none is left when the last engine goes.
 */
void kb_ekey_cleanup(void)
{
    if (rsa_idx >= 0)
        CRYPTO_free_ex_index(CRYPTO_EX_INDEX_RSA, rsa_idx);
    if (ec_idx >= 0)
        CRYPTO_free_ex_index(CRYPTO_EX_INDEX_EC_KEY, ec_idx);
    if (pkey_idx >= 0)
        CRYPTO_free_ex_index(CRYPTO_EX_INDEX_EVP_PKEY, pkey_idx);
    rsa_idx = ec_idx = pkey_idx = -1;
}

const struct kb_ekey *kb_ekey_of_rsa(const RSA *rsa)
{
    return rsa != NULL && rsa_idx >= 0 ? RSA_get_ex_data(rsa, rsa_idx) : NULL;
}

const struct kb_ekey *kb_ekey_of_ec(const EC_KEY *ec)
{
    return ec != NULL && ec_idx >= 0 ? EC_KEY_get_ex_data(ec, ec_idx) : NULL;
}

const struct kb_ekey *kb_ekey_of_pkey(const EVP_PKEY *pkey)
{
    if (pkey == NULL || pkey_idx < 0)
        return NULL;
    /* EVP_PKEY_get_ex_data takes a non-const key but only reads it */
    return EVP_PKEY_get_ex_data((EVP_PKEY *)pkey, pkey_idx);
}

int kb_ekey_check_use(const struct kb_ekey *key, const char *alg,
                      const char *digest)
{
    if (key->algorithms != NULL && !kb_list_has(key->algorithms, alg)) {
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "key %s does not allow %s (it allows: %s)", key->uri, alg,
                     key->algorithms);
        return 0;
    }
    if (digest != NULL && key->mandatory_digest != NULL &&
        strcmp(digest, key->mandatory_digest) != 0) {
        kb_eng_raise(KB_R_UNSUPPORTED, "key %s only signs %s digests, not %s",
                     key->uri, key->mandatory_digest, digest);
        return 0;
    }
    return 1;
}

/* ---- building the EVP_PKEY ---------------------------------------------- */

static EVP_PKEY *rsa_pkey(ENGINE *e, const unsigned char *spki, size_t len,
                          struct kb_ekey *k)
{
    const unsigned char *p = spki;
    RSA *rsa = d2i_RSA_PUBKEY(NULL, &p, (long)len);
    EVP_PKEY *pkey = NULL;

    if (rsa == NULL || !RSA_set_ex_data(rsa, rsa_idx, k))
        goto err;
    k = NULL; /* the RSA owns it now */
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_RSA(pkey, rsa))
        goto err;
    rsa = NULL;
    /* route every EVP_PKEY_CTX of this key to our EVP_PKEY_METHOD */
    if (!EVP_PKEY_set1_engine(pkey, e))
        goto err;
    return pkey;
err:
    EVP_PKEY_free(pkey);
    RSA_free(rsa);
    ekey_free(k);
    return NULL;
}

static EVP_PKEY *ec_pkey(ENGINE *e, const unsigned char *spki, size_t len,
                         struct kb_ekey *k)
{
    const unsigned char *p = spki;
    EC_KEY *pub = d2i_EC_PUBKEY(NULL, &p, (long)len);
    /* made by the engine: it carries our EC_KEY_METHOD and holds the engine */
    EC_KEY *ec = pub != NULL ? EC_KEY_new_method(e) : NULL;
    EVP_PKEY *pkey = NULL;

    if (ec == NULL || !EC_KEY_set_group(ec, EC_KEY_get0_group(pub)) ||
        !EC_KEY_set_public_key(ec, EC_KEY_get0_public_key(pub)) ||
        !EC_KEY_set_ex_data(ec, ec_idx, k))
        goto err;
    k = NULL;
    EC_KEY_set_asn1_flag(ec, OPENSSL_EC_NAMED_CURVE);
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_EC_KEY(pkey, ec))
        goto err;
    EC_KEY_free(pub);
    return pkey;
err:
    EVP_PKEY_free(pkey);
    EC_KEY_free(ec);
    EC_KEY_free(pub);
    ekey_free(k);
    return NULL;
}

static EVP_PKEY *ed25519_pkey(ENGINE *e, const unsigned char *spki, size_t len,
                              struct kb_ekey *k)
{
    const unsigned char *p = spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)len);
    unsigned char raw[32];
    size_t rawlen = sizeof(raw);
    EVP_PKEY *pkey = NULL;

    /*
     * Created with the engine, the key is a legacy one whose EVP_PKEY_CTXs
     * use the engine's Ed25519 EVP_PKEY_METHOD.
     */
    if (pub == NULL || !EVP_PKEY_get_raw_public_key(pub, raw, &rawlen) ||
        (pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, e, raw,
                                            rawlen)) == NULL ||
        !EVP_PKEY_set_ex_data(pkey, pkey_idx, k)) {
        EVP_PKEY_free(pkey);
        EVP_PKEY_free(pub);
        ekey_free(k);
        return NULL;
    }
    EVP_PKEY_free(pub);
    return pkey;
}

static EVP_PKEY *pkey_from_reply(ENGINE *e, const struct kb_wire_msg *reply)
{
    char *type = kb_wire_get_str(reply, KB_TAG_KEY_TYPE);
    const struct kb_wire_field *spki = kb_wire_find(reply, KB_TAG_PUBLIC_KEY);
    struct kb_ekey *k = calloc(1, sizeof(*k));
    EVP_PKEY *pkey = NULL;
    uint32_t v;

    if (k == NULL) {
        kb_eng_raise(KB_R_NOMEM, "out of memory");
        goto done;
    }
    k->uri = kb_wire_get_str(reply, KB_TAG_URI);
    if (k->uri == NULL || type == NULL || spki == NULL) {
        kb_eng_raise(KB_R_PROTOCOL, "the agent's key description lacks URI, "
                                    "KEY_TYPE or PUBLIC_KEY");
        goto done;
    }
    if (kb_wire_get_u32(reply, KB_TAG_BITS, &v))
        k->bits = v;
    if (kb_wire_get_u32(reply, KB_TAG_MAX_MESSAGE, &v))
        k->max_message = v;
    k->algorithms = kb_wire_get_str(reply, KB_TAG_ALGORITHMS);
    k->mandatory_digest = kb_wire_get_str(reply, KB_TAG_MANDATORY_DIGEST);
    char *salt = kb_wire_get_str(reply, KB_TAG_PSS_SALT);
    k->pss_salt_digest = salt != NULL && strcmp(salt, "digest") == 0;
    free(salt);

    char uri[512];
    snprintf(uri, sizeof(uri), "%s", k->uri);
    if (strcmp(type, "rsa") == 0) {
        k->type = KB_EKEY_RSA;
        pkey = rsa_pkey(e, spki->val, spki->len, k);
    } else if (strcmp(type, "ec") == 0) {
        k->type = KB_EKEY_EC;
        pkey = ec_pkey(e, spki->val, spki->len, k);
    } else if (strcmp(type, "ed25519") == 0) {
        k->type = KB_EKEY_ED25519;
        pkey = ed25519_pkey(e, spki->val, spki->len, k);
    } else {
        kb_eng_raise(KB_R_UNSUPPORTED,
                     "key %s has type %s, which the engine does not handle",
                     uri, type);
        goto done;
    }
    k = NULL; /* consumed by the builders, on success and on failure */
    if (pkey == NULL)
        kb_eng_raise(KB_R_PROTOCOL,
                     "the public key of %s does not parse as a %s "
                     "SubjectPublicKeyInfo",
                     uri, type);
done:
    ekey_free(k);
    free(type);
    return pkey;
}

EVP_PKEY *kb_eng_load_privkey(ENGINE *e, const char *key_id,
                              UI_METHOD *ui_method, void *callback_data)
{
    (void)ui_method;
    (void)callback_data;
    if (!kb_uri_valid(key_id)) {
        kb_eng_raise(KB_R_BAD_URI,
                     "'%s' is not a key URI; the engine takes "
                     "kms:<keyring>/<key-id>",
                     key_id != NULL ? key_id : "(null)");
        return NULL;
    }

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_DESCRIBE, 0);
    kb_frame_str(&req, KB_TAG_URI, key_id);
    int ok = kb_eng_call(&req, key_id, &reply);
    kb_buf_free(&req);
    if (!ok)
        return NULL;
    EVP_PKEY *pkey = pkey_from_reply(e, reply);
    kb_wire_msg_free(reply);
    if (pkey != NULL)
        KB_LOG("engine loaded %s: %s, %d bits", key_id,
               OBJ_nid2sn(EVP_PKEY_get_base_id(pkey)), EVP_PKEY_get_bits(pkey));
    return pkey;
}
