/*
 * DECODER for the key-reference PEM, so tools that only read a key file
 * (nginx ssl_certificate_key, curl --key, Node's PEM_read_bio_PrivateKey,
 * `openssl ... -key ref.pem`) get a kms key.
 *
 * OpenSSL 3.0's own PEM-to-DER decoder drops PEM labels it does not know, so
 * the chain is ours end to end, in the shape pkcs11-provider uses:
 *   "KMSBRIDGE KEY URI" PEM --(decoder "DER", input=pem)--> DER with
 *   structure "kmsbridge-keyref" --(decoders "RSA"/"EC"/"ED25519",
 *   input=der)--> a key object passed by reference.
 * Each key-type decoder resolves the URI (DESCRIBE, cached for a few
 * seconds) and answers only for keys of its own type. The OSSL_STORE "file:"
 * loader passes the DER stage on to a fresh decoder context, which reaches
 * the same key-type decoders, so `-key ref.pem` works too.
 */
#include "errors.h"
#include "keyref.h"
#include "log.h"
#include "provider.h"

#include <openssl/bio.h>
#include <openssl/core_object.h>
#include <stdlib.h>
#include <string.h>

static OSSL_FUNC_decoder_newctx_fn kb_dec_newctx;
static OSSL_FUNC_decoder_freectx_fn kb_dec_freectx;
static OSSL_FUNC_decoder_decode_fn kb_pem_decode, kb_rsa_der_decode,
    kb_ec_der_decode, kb_ed25519_der_decode;

#define KB_DECODER_MAX_INPUT (64 * 1024)

static void *kb_dec_newctx(void *provctx)
{
    return provctx; /* no per-context state */
}

static void kb_dec_freectx(void *vctx)
{
    (void)vctx;
}

/* Reads the whole input (at most KB_DECODER_MAX_INPUT bytes). */
static unsigned char *read_all(struct kb_prov *prov, OSSL_CORE_BIO *cin,
                               size_t *len)
{
    BIO *in = BIO_new_from_core_bio(prov->libctx, cin);
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;

    if (in == NULL)
        return NULL;
    for (;;) {
        if (cap - n < 4096) {
            if (cap >= KB_DECODER_MAX_INPUT)
                break; /* far larger than any key reference */
            cap = cap != 0 ? cap * 2 : 4096;
            unsigned char *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                free(buf);
                BIO_free(in);
                return NULL;
            }
            buf = nb;
        }
        size_t got = 0;
        if (!BIO_read_ex(in, buf + n, cap - n, &got) || got == 0)
            break;
        n += got;
    }
    BIO_free(in);
    if (buf != NULL)
        buf[n] = '\0';
    *len = n;
    return buf;
}

static int kb_pem_decode(void *vctx, OSSL_CORE_BIO *cin, int selection,
                         OSSL_CALLBACK *object_cb, void *object_cbarg,
                         OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    struct kb_prov *prov = vctx;
    size_t len = 0;
    unsigned char *text = read_all(prov, cin, &len);
    int ok = 1; /* "nothing for us here" is not an error */

    (void)selection;
    (void)pw_cb;
    (void)pw_cbarg;
    if (text == NULL)
        return 1;
    char *uri = kb_keyref_parse_pem((const char *)text, len);
    free(text);
    if (uri == NULL)
        return 1;

    size_t der_len = 0;
    unsigned char *der = kb_keyref_encode_der(uri, &der_len);
    KB_LOG("key reference PEM names %s", uri);
    free(uri);
    if (der == NULL)
        return 0;
    int type = OSSL_OBJECT_PKEY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type),
        OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE,
                                         (char *)KB_KEYREF_STRUCTURE, 0),
        OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, der, der_len),
        OSSL_PARAM_construct_end(),
    };
    ok = object_cb(params, object_cbarg);
    free(der);
    return ok;
}

static int der_decode(struct kb_prov *prov, enum kb_key_type want,
                      OSSL_CORE_BIO *cin, int selection,
                      OSSL_CALLBACK *object_cb, void *object_cbarg)
{
    size_t len = 0;
    unsigned char *der = read_all(prov, cin, &len);

    if (der == NULL)
        return 1;
    char *uri = kb_keyref_parse_der(der, len);
    free(der);
    if (uri == NULL)
        return 1;
    if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0 && selection != 0) {
        free(uri); /* only parameters wanted: a key reference has none */
        return 1;
    }
    struct kb_key *key = kb_key_load(prov, uri);
    free(uri);
    if (key == NULL)
        return 0; /* the error names the URI and why: stop here */
    int ok = 1;
    if (key->type == want) {
        int type = OSSL_OBJECT_PKEY;
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type),
            OSSL_PARAM_construct_utf8_string(
                OSSL_OBJECT_PARAM_DATA_TYPE,
                (char *)kb_key_type_name(key->type), 0),
            OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key,
                                              sizeof(key)),
            OSSL_PARAM_END,
        };
        ok = object_cb(params, object_cbarg);
        KB_LOG("decoded %s as %s key: %s", key->uri,
               kb_key_type_name(key->type), ok ? "taken" : "refused");
    }
    kb_key_free(key);
    return ok;
}

static int kb_rsa_der_decode(void *vctx, OSSL_CORE_BIO *cin, int selection,
                             OSSL_CALLBACK *object_cb, void *object_cbarg,
                             OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    (void)pw_cb;
    (void)pw_cbarg;
    return der_decode(vctx, KB_KEY_RSA, cin, selection, object_cb,
                      object_cbarg);
}

static int kb_ec_der_decode(void *vctx, OSSL_CORE_BIO *cin, int selection,
                            OSSL_CALLBACK *object_cb, void *object_cbarg,
                            OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    (void)pw_cb;
    (void)pw_cbarg;
    return der_decode(vctx, KB_KEY_EC, cin, selection, object_cb, object_cbarg);
}

static int kb_ed25519_der_decode(void *vctx, OSSL_CORE_BIO *cin, int selection,
                                 OSSL_CALLBACK *object_cb, void *object_cbarg,
                                 OSSL_PASSPHRASE_CALLBACK *pw_cb,
                                 void *pw_cbarg)
{
    (void)pw_cb;
    (void)pw_cbarg;
    return der_decode(vctx, KB_KEY_ED25519, cin, selection, object_cb,
                      object_cbarg);
}

const OSSL_DISPATCH kb_pem_decoder_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))kb_dec_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))kb_dec_freectx},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))kb_pem_decode},
    {0, NULL},
};

const OSSL_DISPATCH kb_rsa_der_decoder_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))kb_dec_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))kb_dec_freectx},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))kb_rsa_der_decode},
    {0, NULL},
};

const OSSL_DISPATCH kb_ec_der_decoder_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))kb_dec_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))kb_dec_freectx},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))kb_ec_der_decode},
    {0, NULL},
};

const OSSL_DISPATCH kb_ed25519_der_decoder_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))kb_dec_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))kb_dec_freectx},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))kb_ed25519_der_decode},
    {0, NULL},
};
