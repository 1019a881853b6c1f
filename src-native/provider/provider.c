/*
 * Provider entry point: configuration, the algorithm tables, and the lazily
 * created channel to the KeyService.
 *
 * Configuration (openssl.cnf provider section, all optional):
 *   agent_socket        path of the agent socket
 *   timeout_ms          per-request timeout (default 30000)
 *   connect_timeout_ms  connect + HELLO timeout (default 5000)
 *   enable_rand         "1"/"yes": offer the KMSBRIDGE random generator
 * The environment (KMSBRIDGE_AGENT_SOCK, KMSBRIDGE_TIMEOUT_MS) overrides the
 * file, so one openssl.cnf serves several agents.
 */
#include "errors.h"
#include "keyref.h"
#include "log.h"
#include "provider.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KB_ALG_RSA "RSA:rsaEncryption:1.2.840.113549.1.1.1"
#define KB_ALG_EC "EC:id-ecPublicKey:1.2.840.10045.2.1"
#define KB_ALG_ED25519 "ED25519:1.3.101.112"
#define KB_DER_DECODER_PROPS                                                   \
    KB_PROPS ",input=der,structure=" KB_KEYREF_STRUCTURE
/* The structure OpenSSL asks of a private key it writes (PEM_write_*). */
#define KB_PEM_ENCODER_PROPS KB_PROPS ",output=pem,structure=PrivateKeyInfo"
#define KB_DER_ENCODER_PROPS KB_PROPS ",output=der,structure=PrivateKeyInfo"

static OSSL_FUNC_provider_teardown_fn kb_teardown;
static OSSL_FUNC_provider_gettable_params_fn kb_gettable_params;
static OSSL_FUNC_provider_get_params_fn kb_get_params;
static OSSL_FUNC_provider_query_operation_fn kb_query_operation;
static OSSL_FUNC_provider_get_reason_strings_fn kb_get_reason_strings;

static const OSSL_ALGORITHM kb_keymgmt[] = {
    {KB_ALG_RSA, KB_PROPS, kb_rsa_keymgmt_functions, "kmsbridge RSA key"},
    {KB_ALG_EC, KB_PROPS, kb_ec_keymgmt_functions, "kmsbridge EC key"},
    {KB_ALG_ED25519, KB_PROPS, kb_ed25519_keymgmt_functions,
     "kmsbridge Ed25519 key"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM kb_signature[] = {
    {KB_ALG_RSA, KB_PROPS, kb_rsa_signature_functions,
     "RSA PKCS#1 v1.5 and PSS signatures by the key manager"},
    {"ECDSA", KB_PROPS, kb_ecdsa_signature_functions,
     "ECDSA signatures by the key manager"},
    {KB_ALG_ED25519, KB_PROPS, kb_ed25519_signature_functions,
     "Ed25519 signatures by the key manager"},
    /* the same, under the names our keys ask for (provider.h) */
    {KB_OP_RSA, KB_PROPS, kb_rsa_signature_functions, NULL},
    {KB_OP_ECDSA, KB_PROPS, kb_ecdsa_signature_functions, NULL},
    {KB_OP_ED25519, KB_PROPS, kb_ed25519_signature_functions, NULL},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM kb_asym_cipher[] = {
    {KB_ALG_RSA, KB_PROPS, kb_rsa_asym_cipher_functions,
     "RSA OAEP and PKCS#1 v1.5 decryption by the key manager"},
    {KB_OP_RSA, KB_PROPS, kb_rsa_asym_cipher_functions, NULL},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM kb_keyexch[] = {
    {"ECDH", KB_PROPS, kb_ecdh_keyexch_functions, "ECDH by the key manager"},
    {KB_OP_ECDH, KB_PROPS, kb_ecdh_keyexch_functions, NULL},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM kb_store[] = {
    {"kms", KB_PROPS, kb_store_functions, "kms: key URIs"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM kb_decoder[] = {
    {"DER", KB_PROPS ",input=pem", kb_pem_decoder_functions,
     "KMSBRIDGE KEY URI PEM to DER"},
    {KB_ALG_RSA, KB_DER_DECODER_PROPS, kb_rsa_der_decoder_functions,
     "kmsbridge key reference to RSA key"},
    {KB_ALG_EC, KB_DER_DECODER_PROPS, kb_ec_der_decoder_functions,
     "kmsbridge key reference to EC key"},
    {KB_ALG_ED25519, KB_DER_DECODER_PROPS, kb_ed25519_der_decoder_functions,
     "kmsbridge key reference to Ed25519 key"},
    {NULL, NULL, NULL, NULL},
};

/* Writing a private key of ours writes its key reference (encoder.c). */
static const OSSL_ALGORITHM kb_encoder[] = {
    {KB_ALG_RSA, KB_PEM_ENCODER_PROPS, kb_pem_encoder_functions,
     "kmsbridge RSA key to key-reference PEM"},
    {KB_ALG_EC, KB_PEM_ENCODER_PROPS, kb_pem_encoder_functions,
     "kmsbridge EC key to key-reference PEM"},
    {KB_ALG_ED25519, KB_PEM_ENCODER_PROPS, kb_pem_encoder_functions,
     "kmsbridge Ed25519 key to key-reference PEM"},
    {KB_ALG_RSA, KB_DER_ENCODER_PROPS, kb_der_encoder_functions,
     "kmsbridge RSA key to key-reference DER"},
    {KB_ALG_EC, KB_DER_ENCODER_PROPS, kb_der_encoder_functions,
     "kmsbridge EC key to key-reference DER"},
    {KB_ALG_ED25519, KB_DER_ENCODER_PROPS, kb_der_encoder_functions,
     "kmsbridge Ed25519 key to key-reference DER"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM kb_rand[] = {
    {"KMSBRIDGE", KB_PROPS, kb_rand_functions,
     "random bytes from the key manager"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM *kb_query_operation(void *provctx, int operation_id,
                                                int *no_cache)
{
    struct kb_prov *prov = provctx;

    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return kb_keymgmt;
    case OSSL_OP_SIGNATURE:
        return kb_signature;
    case OSSL_OP_ASYM_CIPHER:
        return kb_asym_cipher;
    case OSSL_OP_KEYEXCH:
        return kb_keyexch;
    case OSSL_OP_STORE:
        return kb_store;
    case OSSL_OP_DECODER:
        return kb_decoder;
    case OSSL_OP_ENCODER:
        return kb_encoder;
    case OSSL_OP_RAND:
        return prov->enable_rand ? kb_rand : NULL;
    default:
        return NULL;
    }
}

static const OSSL_PARAM kb_param_types[] = {
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_NAME, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_VERSION, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_BUILDINFO, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_STATUS, OSSL_PARAM_INTEGER, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *kb_gettable_params(void *provctx)
{
    (void)provctx;
    return kb_param_types;
}

static int kb_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    (void)provctx;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, "kmsbridge provider"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, KB_PROVIDER_VERSION))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO);
    if (p != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, "kmsbridge " KB_PROVIDER_VERSION
                                    " for " OPENSSL_VERSION_TEXT))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
    if (p != NULL && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static const OSSL_ITEM *kb_get_reason_strings(void *provctx)
{
    (void)provctx;
    return kb_reason_strings();
}

EVP_MD *kb_prov_fetch_md(struct kb_prov *prov, const char *name)
{
    EVP_MD *md = NULL;
    size_t len = strlen(name);
    pthread_mutex_lock(&prov->lock);
    for (size_t i = 0; i < prov->nmds && md == NULL; i++)
        if (strcmp(prov->mds[i].name, name) == 0 &&
            EVP_MD_up_ref(prov->mds[i].md))
            md = prov->mds[i].md;
    pthread_mutex_unlock(&prov->lock);
    if (md != NULL)
        return md;
    md = EVP_MD_fetch(prov->libctx, name, KB_PROPQ_OTHERS);
    if (md == NULL || len >= sizeof(prov->mds[0].name))
        return md;
    pthread_mutex_lock(&prov->lock);
    size_t n = prov->nmds;
    int known = 0; /* another thread remembered it meanwhile */
    for (size_t i = 0; i < n && !known; i++)
        known = strcmp(prov->mds[i].name, name) == 0;
    if (!known && n < sizeof(prov->mds) / sizeof(prov->mds[0]) &&
        EVP_MD_up_ref(md)) {
        memcpy(prov->mds[n].name, name, len + 1);
        prov->mds[n].md = md;
        prov->nmds = n + 1;
    }
    pthread_mutex_unlock(&prov->lock);
    return md;
}

static void kb_teardown(void *provctx)
{
    struct kb_prov *prov = provctx;

    if (prov == NULL)
        return;
    for (size_t i = 0; i < prov->nmds; i++)
        EVP_MD_free(prov->mds[i].md);
    /* the cache outlives nothing: a later provider may get this address */
    kb_key_cache_forget(prov);
    if (prov->chan != NULL)
        prov->chan->ops->destroy(prov->chan);
    OSSL_LIB_CTX_free(prov->libctx);
    pthread_mutex_destroy(&prov->lock);
    free(prov);
}

static const OSSL_DISPATCH kb_provider_functions[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))kb_teardown},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))kb_gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))kb_get_params},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))kb_query_operation},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS,
     (void (*)(void))kb_get_reason_strings},
    {0, NULL},
};

static int parse_bool(const char *v)
{
    return v != NULL &&
           (strcmp(v, "1") == 0 || strcasecmp(v, "yes") == 0 ||
            strcasecmp(v, "true") == 0 || strcasecmp(v, "on") == 0);
}

static void read_config(struct kb_prov *prov, const OSSL_DISPATCH *in)
{
    OSSL_FUNC_core_get_params_fn *core_get_params = NULL;
    char *sock = NULL, *timeout = NULL, *ctimeout = NULL, *rand = NULL;
    char *core_version = NULL;

    for (; in->function_id != 0; in++)
        if (in->function_id == OSSL_FUNC_CORE_GET_PARAMS)
            core_get_params = OSSL_FUNC_core_get_params(in);
    if (core_get_params == NULL)
        return;

    OSSL_PARAM params[] = {
        OSSL_PARAM_utf8_ptr("agent_socket", &sock, 0),
        OSSL_PARAM_utf8_ptr("timeout_ms", &timeout, 0),
        OSSL_PARAM_utf8_ptr("connect_timeout_ms", &ctimeout, 0),
        OSSL_PARAM_utf8_ptr("enable_rand", &rand, 0),
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_CORE_VERSION, &core_version, 0),
        OSSL_PARAM_END,
    };
    if (!core_get_params(prov->handle, params))
        return;
    if (sock != NULL)
        snprintf(prov->socket_path, sizeof(prov->socket_path), "%s", sock);
    prov->timeout_ms = kb_parse_ms(timeout);
    prov->connect_timeout_ms = kb_parse_ms(ctimeout);
    prov->enable_rand = parse_bool(rand);
    KB_LOG("provider %s loaded into OpenSSL %s (built against %s); "
           "config: agent_socket=%s timeout_ms=%u connect_timeout_ms=%u "
           "enable_rand=%d",
           KB_PROVIDER_VERSION, core_version ? core_version : "?",
           OPENSSL_VERSION_TEXT, sock ? sock : "(default)", prov->timeout_ms,
           prov->connect_timeout_ms, prov->enable_rand);
}

static struct kb_channel *kb_prov_channel(struct kb_prov *prov)
{
    struct kb_channel *override = kb_channel_override();
    if (override != NULL)
        return override; /* the Node addon's bridge or its own agent channel */
    pthread_mutex_lock(&prov->lock);
    if (prov->chan == NULL) {
        const char *env_sock = getenv("KMSBRIDGE_AGENT_SOCK");
        const char *env_timeout = getenv("KMSBRIDGE_TIMEOUT_MS");
        struct kb_agent_config cfg = {0};
        char peer[160];

        snprintf(peer, sizeof(peer), "kmsbridge-provider/%s (%s)",
                 KB_PROVIDER_VERSION, OpenSSL_version(OPENSSL_VERSION));
        cfg.peer_name = peer;
        if ((env_sock == NULL || env_sock[0] == '\0') &&
            prov->socket_path[0] != '\0')
            cfg.socket_path = prov->socket_path;
        cfg.connect_timeout_ms = prov->connect_timeout_ms;
        if (kb_parse_ms(env_timeout) == 0)
            cfg.request_timeout_ms = prov->timeout_ms;
        prov->chan = kb_agent_channel_new(&cfg);
    }
    struct kb_channel *ch = prov->chan;
    pthread_mutex_unlock(&prov->lock);
    return ch;
}

int kb_prov_call(struct kb_prov *prov, struct kb_buf *req, const char *uri,
                 struct kb_wire_msg **reply)
{
    struct kb_err err = {0, ""};

    if (kb_channel_call_for(kb_prov_channel(prov), req, "provider", uri, reply,
                            &err))
        return 1;
    kb_raise_err(prov, &err);
    return 0;
}

/*
 * The entry point, named so the Node addon can register it as a built-in
 * provider too (OSSL_PROVIDER_add_builtin).
 */
__attribute__((visibility("default"))) int
kb_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                 const OSSL_DISPATCH **out, void **provctx)
{
    struct kb_prov *prov = calloc(1, sizeof(*prov));

    if (prov == NULL)
        return 0;
    if (pthread_mutex_init(&prov->lock, NULL) != 0) {
        free(prov);
        return 0;
    }
    prov->handle = handle;
    kb_errors_init(in);
    read_config(prov, in);
    prov->libctx = OSSL_LIB_CTX_new_child(handle, in);
    if (prov->libctx == NULL) {
        pthread_mutex_destroy(&prov->lock);
        free(prov);
        return 0;
    }
    *out = kb_provider_functions;
    *provctx = prov;
    return 1;
}

__attribute__((visibility("default"))) int
OSSL_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                   const OSSL_DISPATCH **out, void **provctx)
{
    return kb_provider_init(handle, in, out, provctx);
}
