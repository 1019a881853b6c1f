/*
 * Shared declarations of the kmsbridge OpenSSL 3 provider: the provider
 * context, the key object, and the dispatch tables each operation file
 * defines.
 */
#ifndef KMSBRIDGE_PROVIDER_H
#define KMSBRIDGE_PROVIDER_H

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>

#include "channel.h"
#include "names.h"
#include "wire.h"

#define KB_PROVIDER_NAME "kmsbridge"
#define KB_PROVIDER_VERSION "0.1.0"
#define KB_PROPS "provider=kmsbridge"
/* Property query for the public halves: any provider but this one. */
#define KB_PROPQ_OTHERS "provider!=kmsbridge"
/*
 * The names our keys give OpenSSL for their operations (keymgmt
 * query_operation_name), besides the standard names ours are also
 * registered under. Given "ECDSA", OpenSSL 3.0 fetches the first provider's
 * ECDSA (the default provider's), offers it our key and, refused, falls
 * back to ours: 10k instructions per signature, a third of what a P-256
 * signature costs its caller. These names are only ours.
 */
#define KB_OP_RSA "KMSBRIDGE-RSA"
#define KB_OP_ECDSA "KMSBRIDGE-ECDSA"
#define KB_OP_ECDH "KMSBRIDGE-ECDH"
#define KB_OP_ED25519 "KMSBRIDGE-ED25519"

struct kb_prov {
    const OSSL_CORE_HANDLE *handle;
    OSSL_LIB_CTX *libctx;  /* a child of the application's library context */
    char socket_path[256]; /* from the config; empty: environment/default */
    unsigned timeout_ms;
    unsigned connect_timeout_ms;
    int enable_rand;
    pthread_mutex_t lock;
    struct kb_channel *chan; /* created on first use */
    /* digests by the names callers asked for (kb_prov_fetch_md) */
    struct {
        char name[32];
        EVP_MD *md;
    } mds[8];
    size_t nmds;
};

/*
 * EVP_MD_fetch(prov->libctx, name, KB_PROPQ_OTHERS), remembered: every
 * signature sets its digest by name, and a fetch (a name-map lookup and a
 * method-store search under locks) was 2.7k of the 33k instructions a P-256
 * signature costs its caller. A new reference, or NULL.
 */
EVP_MD *kb_prov_fetch_md(struct kb_prov *prov, const char *name);

/*
 * Sends |req| and waits for a successful reply. On failure raises an error
 * naming |uri| (may be NULL) on the OpenSSL error queue and returns 0.
 */
int kb_prov_call(struct kb_prov *prov, struct kb_buf *req, const char *uri,
                 struct kb_wire_msg **reply);

/* ---- key objects (key.c) ------------------------------------------------ */

enum kb_key_type { KB_KEY_RSA, KB_KEY_EC, KB_KEY_ED25519 };

struct kb_key {
    uint32_t magic;
    struct kb_prov *prov;
    int refs;
    enum kb_key_type type;
    char *uri;     /* NULL for a public key imported for match/derive */
    EVP_PKEY *pub; /* the public half, held by another provider */
    unsigned bits;
    char *curve;            /* "P-256", EC only */
    char *algorithms;       /* comma-separated wire names the key allows */
    char *digests;          /* comma-separated */
    char *mandatory_digest; /* NULL: any of digests */
    int pss_salt_digest;    /* the backend fixes the PSS salt to hLen */
    uint32_t max_message;   /* Ed25519 message limit, 0: none */
};

struct kb_key *kb_key_new(struct kb_prov *prov, enum kb_key_type type);
struct kb_key *kb_key_up_ref(struct kb_key *key);
void kb_key_free(struct kb_key *key);
/* The key object behind an OSSL_OBJECT reference, or NULL. */
struct kb_key *kb_key_from_reference(const void *ref, size_t ref_sz);
/* Resolves a kms: URI through DESCRIBE (cached briefly). Raises on error. */
struct kb_key *kb_key_load(struct kb_prov *prov, const char *uri);
/* Drops the DESCRIBE replies cached for |prov| (at its teardown). */
void kb_key_cache_forget(const struct kb_prov *prov);
/* Builds a key from a DESCRIBE or CREATE reply. Raises on error. */
struct kb_key *kb_key_from_reply(struct kb_prov *prov,
                                 const struct kb_wire_msg *reply);
/* Sets the public half from a SubjectPublicKeyInfo. */
int kb_key_set_public(struct kb_key *key, const unsigned char *spki,
                      size_t len);
/* OpenSSL keymgmt name of a key type: "RSA", "EC", "ED25519". */
const char *kb_key_type_name(enum kb_key_type type);
/* Wire digest name ("sha256") of a digest, or NULL if not supported. */
const char *kb_md_wire_name(const EVP_MD *md);
/* Checks that |key| may sign/decrypt with |alg| and |digest|; raises. */
int kb_key_check_use(const struct kb_key *key, const char *alg,
                     const char *digest);

/* ---- dispatch tables ---------------------------------------------------- */

extern const OSSL_DISPATCH kb_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH kb_ec_keymgmt_functions[];
extern const OSSL_DISPATCH kb_ed25519_keymgmt_functions[];
extern const OSSL_DISPATCH kb_rsa_signature_functions[];
extern const OSSL_DISPATCH kb_ecdsa_signature_functions[];
extern const OSSL_DISPATCH kb_ed25519_signature_functions[];
extern const OSSL_DISPATCH kb_rsa_asym_cipher_functions[];
extern const OSSL_DISPATCH kb_ecdh_keyexch_functions[];
extern const OSSL_DISPATCH kb_store_functions[];
extern const OSSL_DISPATCH kb_pem_decoder_functions[];
extern const OSSL_DISPATCH kb_rsa_der_decoder_functions[];
extern const OSSL_DISPATCH kb_ec_der_decoder_functions[];
extern const OSSL_DISPATCH kb_ed25519_der_decoder_functions[];
extern const OSSL_DISPATCH kb_pem_encoder_functions[];
extern const OSSL_DISPATCH kb_der_encoder_functions[];
extern const OSSL_DISPATCH kb_rand_functions[];

#endif
