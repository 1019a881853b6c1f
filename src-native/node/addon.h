#ifndef KMSBRIDGE_ADDON_H
#define KMSBRIDGE_ADDON_H

#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

/* Throws a JS Error with a code property; always returns NULL for `return
 * throw_error(...)`. */
napi_value addon_throw(napi_env env, const char *code, const char *message);

napi_status local_crypto_register(napi_env env, napi_value exports);
/* serve.c: the agent's connections, served by C threads. */
napi_status serve_register(napi_env env, napi_value exports);
napi_status bridge_register(napi_env env, napi_value exports);
napi_status register_register(napi_env env, napi_value exports);
/* Benchmark hooks (bench.c): channelPing(count), the bridge's own round
 * trip; bridgeStats(), how its worker waited; napStats(), how the agent
 * channel napped. */
napi_status bench_register(napi_env env, napi_value exports);

/* local_crypto.c: signatures of one shape with one key, on the calling
 * thread, for the grants (grants.c). |padding| is "pkcs1", "pss" or "none";
 * digests by our names ("sha256"). The signer holds its own reference to
 * the key and may be used from several threads at once. */
typedef struct evp_pkey_st EVP_PKEY;
struct local_signer;
struct local_signer *local_signer_new(EVP_PKEY *pkey, const char *padding,
                                      const char *digest, const char *mgf1,
                                      int salt_length, char *err,
                                      size_t errlen);
/* 1 and an OPENSSL_malloc'ed signature, or 0 with |err| set. */
int local_signer_sign(struct local_signer *s, const unsigned char *in,
                      size_t in_len, unsigned char **out, size_t *out_len,
                      char *err, size_t errlen);
void local_signer_free(struct local_signer *s);

/* grants.c: operations the in-process KeyService approved, run by the
 * calling thread itself instead of a trip to the worker. */
napi_status grants_register(napi_env env, napi_value exports);
struct kb_buf;
struct kb_wire_msg;
/* Returns 1 with |*reply| if a grant covered the request frame |req|. */
int grants_try(const struct kb_buf *req, struct kb_wire_msg **reply);
/* An agent peer as SO_PEERCRED described it when it connected. */
struct kb_peer {
    long pid;
    unsigned long uid;
    unsigned long gid;
};
/* The agent's side (serve.c): 1 with the reply in |out| if a grant covers
 * this SIGN frame from |peer| (its uid and gid); the audit line names its
 * pid and uid. */
int grants_answer(const uint8_t *frame, size_t len, const struct kb_peer *peer,
                  struct kb_buf *out);
/* Forgets every grant and the audit descriptor (the worker is going). */
void grants_clear(void);

/* pkcs11_sign.c: signatures on a PKCS#11 token for the agent's grants. */
napi_status pkcs11_sign_register(napi_env env, napi_value exports);
struct p11_module;
struct p11_key {
    unsigned long slot;
    unsigned long object;
};
/* The module at |path| that the backend loaded (never loads one itself). */
struct p11_module *p11_module_find(const char *path, char *err, size_t errlen);
/* 1 once fewer than |max_inside| threads are inside the module (this one now
 * counts; a full module is waited for, briefly), 0 if the caller must leave
 * the request to the KeyService. */
int p11_module_enter(struct p11_module *m, int max_inside);
void p11_module_leave(struct p11_module *m);
/* 1 with an OPENSSL_malloc'ed signature (DER for ECDSA), 0 on any error.
 * |algorithm| "ecdsa", "rsa-pkcs1", "rsa-pss" over a digest, or "ed25519"
 * over the message (|digest| ""). */
int p11_sign(struct p11_module *m, const struct p11_key *key,
             const char *algorithm, const char *digest, const char *mgf1,
             int64_t salt, const uint8_t *data, size_t len, unsigned char **out,
             size_t *out_len);

struct kb_channel;
/* The process-wide N-API bridge channel; a non-zero timeout replaces its
 * default. */
struct kb_channel *bridge_channel(unsigned timeout_ms);
/* How many times the KeyService worker polled for a request (bridge.c). */
unsigned long bridge_worker_polls(void);

#endif
