/*
 * KEYMGMT for RSA, EC (P-256/384/521) and Ed25519 keys held by a key manager.
 *
 * Key parameters come from the cached public half (held by another provider,
 * normally the default one) plus what the KeyService said about the key
 * (default and mandatory digest). Export gives the public half only: a
 * request that includes the private key is refused, which is what makes
 * OpenSSL run private operations here instead of handing the key to the
 * default provider. Import accepts public material only (OpenSSL imports a
 * certificate's key to match it against ours, or a peer key for ECDH).
 * Generation creates the key in the key manager (CREATE), named by kms_uri.
 */
#include "errors.h"
#include "log.h"
#include "provider.h"

#include <openssl/rsa.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KB_PARAM_KMS_URI "kms_uri"

static OSSL_FUNC_keymgmt_new_fn kb_rsa_new, kb_ec_new, kb_ed25519_new;
static OSSL_FUNC_keymgmt_free_fn kb_km_free;
static OSSL_FUNC_keymgmt_load_fn kb_km_load;
static OSSL_FUNC_keymgmt_get_params_fn kb_km_get_params;
static OSSL_FUNC_keymgmt_gettable_params_fn kb_rsa_gettable_params,
    kb_ec_gettable_params, kb_ed25519_gettable_params;
static OSSL_FUNC_keymgmt_has_fn kb_km_has;
static OSSL_FUNC_keymgmt_match_fn kb_km_match;
static OSSL_FUNC_keymgmt_validate_fn kb_km_validate;
static OSSL_FUNC_keymgmt_import_fn kb_km_import;
static OSSL_FUNC_keymgmt_import_types_fn kb_rsa_io_types, kb_ec_io_types,
    kb_ed25519_io_types;
static OSSL_FUNC_keymgmt_export_fn kb_km_export;
static OSSL_FUNC_keymgmt_dup_fn kb_km_dup;
static OSSL_FUNC_keymgmt_query_operation_name_fn kb_rsa_query_name,
    kb_ec_query_name, kb_ed25519_query_name;
static OSSL_FUNC_keymgmt_gen_init_fn kb_rsa_gen_init, kb_ec_gen_init,
    kb_ed25519_gen_init;
static OSSL_FUNC_keymgmt_gen_set_params_fn kb_km_gen_set_params;
static OSSL_FUNC_keymgmt_gen_settable_params_fn kb_rsa_gen_settable,
    kb_ec_gen_settable, kb_ed25519_gen_settable;
static OSSL_FUNC_keymgmt_gen_fn kb_km_gen;
static OSSL_FUNC_keymgmt_gen_cleanup_fn kb_km_gen_cleanup;

/* ---- new / free / load / dup -------------------------------------------- */

static void *kb_rsa_new(void *provctx)
{
    return kb_key_new(provctx, KB_KEY_RSA);
}

static void *kb_ec_new(void *provctx)
{
    return kb_key_new(provctx, KB_KEY_EC);
}

static void *kb_ed25519_new(void *provctx)
{
    return kb_key_new(provctx, KB_KEY_ED25519);
}

static void kb_km_free(void *keydata)
{
    kb_key_free(keydata);
}

/* The store and the decoders pass a key object by reference. */
static void *kb_km_load(const void *reference, size_t reference_sz)
{
    return kb_key_up_ref(kb_key_from_reference(reference, reference_sz));
}

static void *kb_km_dup(const void *keydata_from, int selection)
{
    const struct kb_key *from = keydata_from;
    struct kb_key *key = kb_key_new(from->prov, from->type);

    (void)selection; /* the public half is shared; nothing to copy apart */
    if (key == NULL)
        return NULL;
    key->bits = from->bits;
    key->pss_salt_digest = from->pss_salt_digest;
    key->max_message = from->max_message;
    if ((from->uri != NULL && (key->uri = strdup(from->uri)) == NULL) ||
        (from->curve != NULL && (key->curve = strdup(from->curve)) == NULL) ||
        (from->algorithms != NULL &&
         (key->algorithms = strdup(from->algorithms)) == NULL) ||
        (from->digests != NULL &&
         (key->digests = strdup(from->digests)) == NULL) ||
        (from->mandatory_digest != NULL &&
         (key->mandatory_digest = strdup(from->mandatory_digest)) == NULL) ||
        (from->pub != NULL && !EVP_PKEY_up_ref(from->pub))) {
        kb_key_free(key);
        return NULL;
    }
    key->pub = from->pub;
    return key;
}

/* ---- parameters --------------------------------------------------------- */

static const char *default_digest(const struct kb_key *key)
{
    if (key->type == KB_KEY_ED25519)
        return NULL;
    if (key->mandatory_digest != NULL) {
        if (strcmp(key->mandatory_digest, "sha384") == 0)
            return "SHA2-384";
        if (strcmp(key->mandatory_digest, "sha512") == 0)
            return "SHA2-512";
        if (strcmp(key->mandatory_digest, "sha224") == 0)
            return "SHA2-224";
        if (strcmp(key->mandatory_digest, "sha1") == 0)
            return "SHA1";
        return "SHA2-256";
    }
    if (key->type == KB_KEY_EC && key->bits >= 521)
        return "SHA2-512";
    if (key->type == KB_KEY_EC && key->bits >= 384)
        return "SHA2-384";
    return "SHA2-256";
}

static int kb_km_get_params(void *keydata, OSSL_PARAM params[])
{
    struct kb_key *key = keydata;
    OSSL_PARAM *p;

    if (key == NULL)
        return 0;
    /* bits, security bits, max size, group, public key: the public half's */
    if (key->pub != NULL && !EVP_PKEY_get_params(key->pub, params))
        return 0;

    p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST);
    if (p != NULL) {
        const char *d = default_digest(key);
        if (!OSSL_PARAM_set_utf8_string(p, d != NULL ? d : ""))
            return 0;
    }
    p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_MANDATORY_DIGEST);
    if (p != NULL) {
        if (key->type == KB_KEY_ED25519) {
            if (!OSSL_PARAM_set_utf8_string(p, ""))
                return 0;
        } else if (key->mandatory_digest != NULL) {
            if (!OSSL_PARAM_set_utf8_string(p, default_digest(key)))
                return 0;
        }
    }
    if (key->pub == NULL) {
        p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_BITS);
        if (p != NULL && !OSSL_PARAM_set_int(p, (int)key->bits))
            return 0;
    }
    return 1;
}

#define KB_COMMON_GETTABLE                                                     \
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),                                \
        OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),                   \
        OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),                        \
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),       \
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_MANDATORY_DIGEST, NULL, 0)

static const OSSL_PARAM kb_rsa_gettable[] = {
    KB_COMMON_GETTABLE,
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ec_gettable[] = {
    KB_COMMON_GETTABLE,
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ed25519_gettable[] = {
    KB_COMMON_GETTABLE,
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_rsa_gettable_params(void *provctx)
{
    (void)provctx;
    return kb_rsa_gettable;
}

static const OSSL_PARAM *kb_ec_gettable_params(void *provctx)
{
    (void)provctx;
    return kb_ec_gettable;
}

static const OSSL_PARAM *kb_ed25519_gettable_params(void *provctx)
{
    (void)provctx;
    return kb_ed25519_gettable;
}

/* ---- has / match / validate --------------------------------------------- */

static int kb_km_has(const void *keydata, int selection)
{
    const struct kb_key *key = keydata;

    if (key == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && key->uri == NULL)
        return 0;
    if ((selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY |
                      OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS)) != 0 &&
        key->pub == NULL)
        return 0;
    return 1;
}

static int kb_km_match(const void *keydata1, const void *keydata2,
                       int selection)
{
    const struct kb_key *a = keydata1, *b = keydata2;

    if (a == NULL || b == NULL || a->type != b->type)
        return 0;
    if (a->pub == NULL || b->pub == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0)
        return EVP_PKEY_eq(a->pub, b->pub) == 1;
    if ((selection & OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS) != 0)
        return EVP_PKEY_parameters_eq(a->pub, b->pub) == 1;
    return 1;
}

static int kb_km_validate(const void *keydata, int selection, int checktype)
{
    (void)selection;
    (void)checktype;
    return kb_km_has(keydata, selection & ~OSSL_KEYMGMT_SELECT_PRIVATE_KEY);
}

/* ---- import / export (public half only) --------------------------------- */

static const OSSL_PARAM kb_rsa_io[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ec_io[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ed25519_io[] = {
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_rsa_io_types(int selection)
{
    return (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0 ? kb_rsa_io : NULL;
}

static const OSSL_PARAM *kb_ec_io_types(int selection)
{
    return (selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY |
                         OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS)) != 0
               ? kb_ec_io
               : NULL;
}

static const OSSL_PARAM *kb_ed25519_io_types(int selection)
{
    return (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0 ? kb_ed25519_io
                                                             : NULL;
}

static int has_private_material(const OSSL_PARAM params[])
{
    static const char *const names[] = {
        OSSL_PKEY_PARAM_PRIV_KEY,      OSSL_PKEY_PARAM_RSA_D,
        OSSL_PKEY_PARAM_RSA_FACTOR1,   OSSL_PKEY_PARAM_RSA_FACTOR2,
        OSSL_PKEY_PARAM_RSA_EXPONENT1, OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (OSSL_PARAM_locate_const(params, names[i]) != NULL)
            return 1;
    return 0;
}

static int kb_km_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    struct kb_key *key = keydata;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pk = NULL;
    int ok = 0;

    if (key == NULL || key->pub != NULL || key->uri != NULL)
        return 0;
    if (has_private_material(params)) {
        /* Quietly: OpenSSL tries providers in turn and finds the right one */
        KB_LOG("refused to import private %s key material",
               kb_key_type_name(key->type));
        return 0;
    }
    int what = (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0
                   ? EVP_PKEY_PUBLIC_KEY
                   : EVP_PKEY_KEY_PARAMETERS;
    ctx = EVP_PKEY_CTX_new_from_name(
        key->prov->libctx, kb_key_type_name(key->type), KB_PROPQ_OTHERS);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pk, what, (OSSL_PARAM *)params) <= 0)
        goto done;
    key->pub = pk;
    key->bits = (unsigned)EVP_PKEY_get_bits(pk);
    pk = NULL;
    ok = 1;
done:
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

static int kb_km_export(void *keydata, int selection, OSSL_CALLBACK *param_cb,
                        void *cbarg)
{
    struct kb_key *key = keydata;

    if (key == NULL || key->pub == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) {
        /* OpenSSL asks this when it offers our key to another provider's
         * operation, and may discard the error (before our keys named
         * KMSBRIDGE- operations it did so for every signature, and the
         * message formatted at length cost a fifth of the signature's
         * instructions). The reason says it all; the data names the key. */
        kb_raise(key->prov, KB_R_PRIVATE_EXPORT, "%s",
                 key->uri != NULL ? key->uri : "this key");
        return 0;
    }
    return EVP_PKEY_export(key->pub, selection, param_cb, cbarg);
}

/* ---- operation names ---------------------------------------------------- */

static const char *kb_rsa_query_name(int operation_id)
{
    (void)operation_id;
    return KB_OP_RSA;
}

static const char *kb_ec_query_name(int operation_id)
{
    switch (operation_id) {
    case OSSL_OP_KEYEXCH:
        return KB_OP_ECDH;
    case OSSL_OP_SIGNATURE:
        return KB_OP_ECDSA;
    default:
        return NULL;
    }
}

static const char *kb_ed25519_query_name(int operation_id)
{
    (void)operation_id;
    return KB_OP_ED25519;
}

/* ---- generation: CREATE in the key manager ------------------------------ */

struct kb_gen_ctx {
    struct kb_prov *prov;
    enum kb_key_type type;
    int selection;
    char *uri;
    size_t bits;
    char group[32];
};

static void *gen_init(void *provctx, enum kb_key_type type, int selection,
                      const OSSL_PARAM params[])
{
    struct kb_gen_ctx *g = calloc(1, sizeof(*g));

    if (g == NULL)
        return NULL;
    g->prov = provctx;
    g->type = type;
    g->selection = selection;
    g->bits = 2048;
    if (type == KB_KEY_EC)
        strcpy(g->group, "P-256");
    if (!kb_km_gen_set_params(g, params)) {
        kb_km_gen_cleanup(g);
        return NULL;
    }
    return g;
}

static void *kb_rsa_gen_init(void *provctx, int selection,
                             const OSSL_PARAM params[])
{
    return gen_init(provctx, KB_KEY_RSA, selection, params);
}

static void *kb_ec_gen_init(void *provctx, int selection,
                            const OSSL_PARAM params[])
{
    return gen_init(provctx, KB_KEY_EC, selection, params);
}

static void *kb_ed25519_gen_init(void *provctx, int selection,
                                 const OSSL_PARAM params[])
{
    return gen_init(provctx, KB_KEY_ED25519, selection, params);
}

static int kb_km_gen_set_params(void *genctx, const OSSL_PARAM params[])
{
    struct kb_gen_ctx *g = genctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    p = OSSL_PARAM_locate_const(params, KB_PARAM_KMS_URI);
    if (p != NULL) {
        const char *s = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &s))
            return 0;
        free(g->uri);
        if ((g->uri = strdup(s)) == NULL)
            return 0;
    }
    p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_BITS);
    if (p != NULL && !OSSL_PARAM_get_size_t(p, &g->bits))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_GROUP_NAME);
    if (p != NULL) {
        const char *s = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &s) ||
            strlen(s) >= sizeof(g->group))
            return 0;
        strcpy(g->group, s);
    }
    return 1;
}

static const OSSL_PARAM kb_rsa_gen_params[] = {
    OSSL_PARAM_utf8_string(KB_PARAM_KMS_URI, NULL, 0),
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ec_gen_params[] = {
    OSSL_PARAM_utf8_string(KB_PARAM_KMS_URI, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM kb_ed25519_gen_params[] = {
    OSSL_PARAM_utf8_string(KB_PARAM_KMS_URI, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_rsa_gen_settable(void *genctx, void *provctx)
{
    (void)genctx;
    (void)provctx;
    return kb_rsa_gen_params;
}

static const OSSL_PARAM *kb_ec_gen_settable(void *genctx, void *provctx)
{
    (void)genctx;
    (void)provctx;
    return kb_ec_gen_params;
}

static const OSSL_PARAM *kb_ed25519_gen_settable(void *genctx, void *provctx)
{
    (void)genctx;
    (void)provctx;
    return kb_ed25519_gen_params;
}

static const char *key_spec(struct kb_gen_ctx *g)
{
    switch (g->type) {
    case KB_KEY_RSA:
        return g->bits == 2048   ? "rsa-2048"
               : g->bits == 3072 ? "rsa-3072"
               : g->bits == 4096 ? "rsa-4096"
                                 : NULL;
    case KB_KEY_EC:
        if (strcasecmp(g->group, "P-256") == 0 ||
            strcasecmp(g->group, "prime256v1") == 0 ||
            strcasecmp(g->group, "secp256r1") == 0)
            return "ec-p256";
        if (strcasecmp(g->group, "P-384") == 0 ||
            strcasecmp(g->group, "secp384r1") == 0)
            return "ec-p384";
        if (strcasecmp(g->group, "P-521") == 0 ||
            strcasecmp(g->group, "secp521r1") == 0)
            return "ec-p521";
        return NULL;
    case KB_KEY_ED25519:
        return "ed25519";
    }
    return NULL;
}

static void *kb_km_gen(void *genctx, OSSL_CALLBACK *cb, void *cbarg)
{
    struct kb_gen_ctx *g = genctx;
    struct kb_prov *prov = g->prov;
    const char *spec;

    (void)cb;
    (void)cbarg;
    if ((g->selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0) {
        kb_raise(prov, KB_R_UNSUPPORTED,
                 "kmsbridge generates keys, not domain parameters");
        return NULL;
    }
    if (g->uri == NULL) {
        kb_raise(prov, KB_R_BAD_PARAMETER,
                 "key generation needs the URI of the new key: "
                 "-pkeyopt kms_uri:kms:<keyring>/<name>");
        return NULL;
    }
    const char *slash = strchr(g->uri, '/');
    if (strncmp(g->uri, "kms:", 4) != 0 || slash == NULL ||
        slash == g->uri + 4 || slash[1] == '\0') {
        kb_raise(prov, KB_R_BAD_URI, "%s is not a kms:<keyring>/<name> URI",
                 g->uri);
        return NULL;
    }
    if ((spec = key_spec(g)) == NULL) {
        if (g->type == KB_KEY_RSA)
            kb_raise(prov, KB_R_UNSUPPORTED,
                     "RSA keys of %zu bits are not offered (2048, 3072, 4096)",
                     g->bits);
        else
            kb_raise(prov, KB_R_UNSUPPORTED,
                     "curve %s is not offered (P-256, P-384, P-521)", g->group);
        return NULL;
    }

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_CREATE, 0);
    kb_frame_strn(&req, KB_TAG_KEYRING, g->uri + 4,
                  (size_t)(slash - (g->uri + 4)));
    kb_frame_str(&req, KB_TAG_NAME, slash + 1);
    kb_frame_str(&req, KB_TAG_KEY_SPEC, spec);
    int ok = kb_prov_call(prov, &req, g->uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return NULL;
    struct kb_key *key = kb_key_from_reply(prov, reply);
    kb_wire_msg_free(reply);
    if (key != NULL && key->type != g->type) {
        kb_raise(prov, KB_R_PROTOCOL, "the agent created a %s key for %s",
                 kb_key_type_name(key->type), g->uri);
        kb_key_free(key);
        return NULL;
    }
    if (key != NULL)
        KB_LOG("created %s (%s)", key->uri, spec);
    return key;
}

static void kb_km_gen_cleanup(void *genctx)
{
    struct kb_gen_ctx *g = genctx;
    if (g == NULL)
        return;
    free(g->uri);
    free(g);
}

/* ---- dispatch tables ---------------------------------------------------- */

#define KB_KEYMGMT_COMMON                                                      \
    {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))kb_km_free},                      \
        {OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))kb_km_load},                  \
        {OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))kb_km_get_params},      \
        {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))kb_km_has},                    \
        {OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))kb_km_match},                \
        {OSSL_FUNC_KEYMGMT_VALIDATE, (void (*)(void))kb_km_validate},          \
        {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))kb_km_import},              \
        {OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))kb_km_export},              \
        {OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))kb_km_dup},                    \
        {OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS,                                     \
         (void (*)(void))kb_km_gen_set_params},                                \
        {OSSL_FUNC_KEYMGMT_GEN, (void (*)(void))kb_km_gen},                    \
    {                                                                          \
        OSSL_FUNC_KEYMGMT_GEN_CLEANUP, (void (*)(void))kb_km_gen_cleanup       \
    }

const OSSL_DISPATCH kb_rsa_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))kb_rsa_new},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))kb_rsa_gettable_params},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))kb_rsa_io_types},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))kb_rsa_io_types},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))kb_rsa_query_name},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, (void (*)(void))kb_rsa_gen_init},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS,
     (void (*)(void))kb_rsa_gen_settable},
    KB_KEYMGMT_COMMON,
    {0, NULL},
};

const OSSL_DISPATCH kb_ec_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))kb_ec_new},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))kb_ec_gettable_params},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))kb_ec_io_types},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))kb_ec_io_types},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))kb_ec_query_name},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, (void (*)(void))kb_ec_gen_init},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, (void (*)(void))kb_ec_gen_settable},
    KB_KEYMGMT_COMMON,
    {0, NULL},
};

const OSSL_DISPATCH kb_ed25519_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))kb_ed25519_new},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS,
     (void (*)(void))kb_ed25519_gettable_params},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))kb_ed25519_io_types},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))kb_ed25519_io_types},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME,
     (void (*)(void))kb_ed25519_query_name},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, (void (*)(void))kb_ed25519_gen_init},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS,
     (void (*)(void))kb_ed25519_gen_settable},
    KB_KEYMGMT_COMMON,
    {0, NULL},
};
