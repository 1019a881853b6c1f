/*
 * The legacy ENGINE "kmsbridge": shared declarations of its files.
 *
 * The ENGINE API is deprecated in OpenSSL 3 (it stays until 4.0) and this
 * interface exists precisely for applications that still use it, so the
 * deprecation warnings are silenced here, for the engine files only: every
 * engine file includes this header before any OpenSSL header.
 */
#ifndef KMSBRIDGE_ENGINE_H
#define KMSBRIDGE_ENGINE_H

#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#endif

#include <openssl/ec.h>
#include <openssl/engine.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>

#include "channel.h"
#include "names.h"
#include "wire.h"

#define KB_ENGINE_ID "kmsbridge"
#define KB_ENGINE_NAME "kmsbridge: private keys held by a key manager"
#define KB_ENGINE_VERSION "0.1.0"

/* ---- engine state and the channel (engine.c) ---------------------------- */

/*
 * Sends |req| and waits for a successful reply. On failure raises an error
 * naming |uri| (may be NULL) on the OpenSSL error queue and returns 0.
 */
int kb_eng_call(struct kb_buf *req, const char *uri,
                struct kb_wire_msg **reply);

/* 1 when verify/encrypt must go to the key manager (KMSBRIDGE_REMOTE_PUBKEY).
 */
int kb_eng_remote_pubkey(void);

/* ---- errors (errors.c) -------------------------------------------------- */

/* Registers the engine's error library and strings; idempotent. */
void kb_eng_errors_load(void);
void kb_eng_errors_unload(void);

/*
 * Raises |reason| (the provider's enum kb_reason codes) with a printf
 * message, prefixed "kmsbridge: ". Never pass key material or data.
 */
void kb_eng_raise_at(const char *file, int line, const char *func, int reason,
                     const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define kb_eng_raise(reason, ...)                                              \
    kb_eng_raise_at(__FILE__, __LINE__, __func__, (reason), __VA_ARGS__)

/* ---- key objects (keys.c) ----------------------------------------------- */

enum kb_ekey_type { KB_EKEY_RSA, KB_EKEY_EC, KB_EKEY_ED25519 };

/*
 * What the engine knows about a key of ours, attached as ex_data to the RSA,
 * EC_KEY or (Ed25519) EVP_PKEY object: the URI and the key's policy from
 * DESCRIBE. No handle or connection, so a key loaded before fork() works in
 * the child: every operation sends the URI again.
 */
struct kb_ekey {
    enum kb_ekey_type type;
    char *uri;
    unsigned bits;
    char *algorithms;       /* comma-separated wire names the key allows */
    char *mandatory_digest; /* NULL: any digest the key manager takes */
    int pss_salt_digest;    /* the backend fixes the PSS salt to hLen */
    uint32_t max_message;   /* Ed25519 message limit, 0: none */
};

/*
 * Sets up the ex_data indexes when the first engine is bound (1 on success)
 * and frees them when the last one goes; called under the engine's lock.
 */
int kb_ekey_init(void);
void kb_ekey_cleanup(void);

/* The kmsbridge key behind an RSA, EC_KEY or Ed25519 EVP_PKEY, or NULL. */
const struct kb_ekey *kb_ekey_of_rsa(const RSA *rsa);
const struct kb_ekey *kb_ekey_of_ec(const EC_KEY *ec);
const struct kb_ekey *kb_ekey_of_pkey(const EVP_PKEY *pkey);

/* Checks that |key| allows |alg| (and |digest|, may be NULL); raises. */
int kb_ekey_check_use(const struct kb_ekey *key, const char *alg,
                      const char *digest);

/* ENGINE_set_load_privkey_function / load_pubkey callbacks. */
EVP_PKEY *kb_eng_load_privkey(ENGINE *e, const char *key_id,
                              UI_METHOD *ui_method, void *callback_data);

/* ---- EVP_PKEY_METHODs: RSA (pkey_rsa.c) and Ed25519 (pkey_ed25519.c) ---- */

/*
 * Each ENGINE object gets methods of its own: OpenSSL frees an engine's
 * EVP_PKEY_METHODs (EVP_PKEY_FLAG_DYNAMIC) when it frees the engine, so two
 * engines sharing one method would free it twice.
 */
EVP_PKEY_METHOD *kb_pkey_rsa_new(void);
EVP_PKEY_METHOD *kb_pkey_ed25519_new(void);

/* ---- REMOTE_PUBKEY mode (remote_pubkey.c) ------------------------------- */

/* What VERIFY carries besides the data: as in SIGN. */
struct kb_eng_sig_params {
    const char *alg;    /* rsa-pkcs1, rsa-pss, ecdsa, ed25519 */
    const char *digest; /* wire name, or NULL */
    const char *mgf1;   /* PSS MGF1 digest, NULL: same as digest */
    int salt;           /* PSS salt length, -1: any (recovered) */
};

/*
 * VERIFY by the key manager: 1 valid, 0 the signature does not verify
 * (nothing raised), -1 the check could not be made (raised).
 */
int kb_eng_remote_verify(const struct kb_ekey *k,
                         const struct kb_eng_sig_params *p,
                         const unsigned char *tbs, size_t tbslen,
                         const unsigned char *sig, size_t siglen);

/* ---- EC_KEY_METHOD (ec.c) ----------------------------------------------- */

int kb_ec_setup(void);
void kb_ec_teardown(void);
EC_KEY_METHOD *kb_ec_method(void);

/* ---- RAND_METHOD (rand.c) ----------------------------------------------- */

const RAND_METHOD *kb_rand_method(void);

#endif
