/*
 * ENCODER: writing a kmsbridge key writes its key reference.
 *
 * When an application asks OpenSSL to write one of our private keys
 * (`openssl genpkey -out`, `openssl pkey -out`, PEM_write_bio_PrivateKey,
 * i2d_PrivateKey), it gets the key-reference PEM of docs/wire-format.md (or
 * its DER), the very file `kmsbridge keyref` writes. That is safe: the file
 * holds only the kms: URI, no key material, and reading it back through our
 * decoder gives the same key in the key manager. Refusing instead would make
 * `openssl genpkey -pkeyopt kms_uri:...` create the key and then fail, and
 * would leave users nothing to hand to tools that only take a key file.
 *
 * The encoders answer for the output structure OpenSSL asks of a private key
 * ("PrivateKeyInfo"), in PEM and DER, and only for selections that include
 * the private key: public keys (`-pubout`, SubjectPublicKeyInfo) and text
 * dumps stay with the default provider's encoders, which receive the public
 * half through our keymgmt's export. There is no import_object, so these
 * encoders never take a key held by another provider.
 */
#include "errors.h"
#include "keyref.h"
#include "log.h"
#include "provider.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

static OSSL_FUNC_encoder_newctx_fn kb_enc_newctx;
static OSSL_FUNC_encoder_freectx_fn kb_enc_freectx;
static OSSL_FUNC_encoder_does_selection_fn kb_enc_does_selection;
static OSSL_FUNC_encoder_encode_fn kb_enc_encode_pem, kb_enc_encode_der;

static void *kb_enc_newctx(void *provctx)
{
    return provctx; /* no per-context state */
}

static void kb_enc_freectx(void *vctx)
{
    (void)vctx;
}

static int kb_enc_does_selection(void *provctx, int selection)
{
    (void)provctx;
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

/*
 * Checks the call and returns the DER of |key|'s reference, or NULL (raised).
 * |abstract| is only set when an encoder chain feeds us another encoder's
 * output, which never happens: we are always the first and only encoder.
 */
static unsigned char *reference_der(struct kb_prov *prov, const void *obj,
                                    const OSSL_PARAM abstract[], int selection,
                                    size_t *len)
{
    const struct kb_key *key = obj;

    if (abstract != NULL || key == NULL ||
        (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0) {
        kb_raise(prov, KB_R_INVALID_ARGUMENT,
                 "kmsbridge encodes its own private keys only");
        return NULL;
    }
    if (key->uri == NULL) {
        kb_raise(prov, KB_R_NO_PRIVATE_KEY,
                 "this %s key is a public key, not a key in a key manager",
                 kb_key_type_name(key->type));
        return NULL;
    }
    unsigned char *der = kb_keyref_encode_der(key->uri, len);
    if (der == NULL)
        kb_raise(prov, KB_R_NOMEM, "cannot encode the reference to %s",
                 key->uri);
    return der;
}

static int kb_enc_encode_pem(void *vctx, OSSL_CORE_BIO *cout, const void *obj,
                             const OSSL_PARAM abstract[], int selection,
                             OSSL_PASSPHRASE_CALLBACK *cb, void *cbarg)
{
    struct kb_prov *prov = vctx;
    const struct kb_key *key = obj;
    size_t len = 0;
    int ok = 0;

    /*
     * A passphrase (genpkey -aes256) would encrypt nothing secret: the file
     * names the key, the key manager guards it. So it is not asked for.
     */
    (void)cb;
    (void)cbarg;
    unsigned char *der = reference_der(prov, obj, abstract, selection, &len);
    if (der == NULL)
        return 0;
    BIO *out = BIO_new_from_core_bio(prov->libctx, cout);
    /* The same text `kmsbridge keyref` writes; PEM readers skip it. */
    if (out != NULL &&
        BIO_printf(out,
                   "kmsbridge key reference: %s\n"
                   "The private key stays in the key manager; this file only "
                   "names it.\n",
                   key->uri) > 0 &&
        PEM_write_bio(out, KB_KEYREF_PEM_LABEL, "", der, (long)len) > 0)
        ok = 1;
    else
        kb_raise(prov, KB_R_INTERNAL, "cannot write the reference to %s",
                 key->uri);
    BIO_free(out);
    free(der);
    if (ok)
        KB_LOG("wrote the key reference PEM of %s", key->uri);
    return ok;
}

static int kb_enc_encode_der(void *vctx, OSSL_CORE_BIO *cout, const void *obj,
                             const OSSL_PARAM abstract[], int selection,
                             OSSL_PASSPHRASE_CALLBACK *cb, void *cbarg)
{
    struct kb_prov *prov = vctx;
    const struct kb_key *key = obj;
    size_t len = 0, written = 0;
    int ok = 0;

    (void)cb;
    (void)cbarg;
    unsigned char *der = reference_der(prov, obj, abstract, selection, &len);
    if (der == NULL)
        return 0;
    BIO *out = BIO_new_from_core_bio(prov->libctx, cout);
    if (out != NULL && BIO_write_ex(out, der, len, &written) && written == len)
        ok = 1;
    else
        kb_raise(prov, KB_R_INTERNAL, "cannot write the reference to %s",
                 key->uri);
    BIO_free(out);
    free(der);
    if (ok)
        KB_LOG("wrote the key reference DER of %s", key->uri);
    return ok;
}

const OSSL_DISPATCH kb_pem_encoder_functions[] = {
    {OSSL_FUNC_ENCODER_NEWCTX, (void (*)(void))kb_enc_newctx},
    {OSSL_FUNC_ENCODER_FREECTX, (void (*)(void))kb_enc_freectx},
    {OSSL_FUNC_ENCODER_DOES_SELECTION, (void (*)(void))kb_enc_does_selection},
    {OSSL_FUNC_ENCODER_ENCODE, (void (*)(void))kb_enc_encode_pem},
    {0, NULL},
};

const OSSL_DISPATCH kb_der_encoder_functions[] = {
    {OSSL_FUNC_ENCODER_NEWCTX, (void (*)(void))kb_enc_newctx},
    {OSSL_FUNC_ENCODER_FREECTX, (void (*)(void))kb_enc_freectx},
    {OSSL_FUNC_ENCODER_DOES_SELECTION, (void (*)(void))kb_enc_does_selection},
    {OSSL_FUNC_ENCODER_ENCODE, (void (*)(void))kb_enc_encode_der},
    {0, NULL},
};
