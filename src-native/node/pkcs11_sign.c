/*
 * Signatures with a key on a PKCS#11 token, run by the agent's serving
 * threads for a grant (grants.c), without the trip through JavaScript and
 * libuv's pool that the PKCS#11 backend (src-ts/backends/pkcs11.ts) takes.
 *
 * Only the module the backend loaded and initialized is ever used: it is
 * found with dlopen(RTLD_NOLOAD), so this file never loads, initializes or
 * logs in to anything. A signature takes an idle session of ours for its
 * slot or opens one (the login the backend made holds for every session of
 * the process), and gives it back when the signature is made; a session that
 * saw an error is closed. There are never more of ours than threads may be
 * inside the module, and the backend leaves that many of the keyring's
 * max_sessions to us. Any CKR_ error gives the request back to the
 * KeyService, which answers, recovers and reports as it always does.
 *
 * A token that hangs must not take every serving thread with it: at most
 * |max_inside| threads are inside one module at a time. A thread that finds
 * the module full waits for a place, for twice its average signature and
 * at least 5 ms (a thread inside may be off its core that long here; the
 * JavaScript route costs several times more CPU than the wait, so sending a
 * busy token's overflow there lowered throughput: docs/bench/notes.md); if
 * none frees in time the module counts as stalled and, until a thread comes
 * out of it, requests go to the KeyService at once, whose per-keyring timeout
 * answers the client. So a hung token costs the serving threads one bounded
 * wait, not every request. Before the backend finalizes the module it
 * revokes its grants and waits for the threads inside to leave
 * (pkcs11Quiesce).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include "addon.h"
#include "spin.h"

#define MAX_MODULES 8
#define MAX_IDLE 8         /* at least the most threads inside at once */
#define MAX_SIGNATURE 1024 /* RSA-8192 */
/* Bounds of the wait for a place in a full module (twice the module's
 * average signature, within these). */
#define PLACE_WAIT_MIN_NS 5000000LL
#define PLACE_WAIT_MAX_NS 50000000LL

struct idle_session {
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE handle;
};

struct p11_module {
    char *path;
    void *dl; /* our reference: the code stays mapped while a thread runs it */
    CK_FUNCTION_LIST_PTR fl;
    atomic_int inside;
    atomic_int waiting;         /* threads waiting for a place inside */
    atomic_bool stalled;        /* a wait timed out; no thread left since */
    atomic_llong sign_ns;       /* moving average of one signature */
    pthread_mutex_t place_lock; /* with place_freed: the waits for a place */
    pthread_cond_t place_freed;
    pthread_mutex_t idle_lock;
    struct idle_session idle[MAX_IDLE];
    size_t nidle;
};

/* Modules are kept for the life of the process (a handful at most), so a
 * thread that found one through a grant never holds a dangling pointer. */
static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct p11_module modules[MAX_MODULES];
static size_t nmodules;

static struct p11_module *module_named(const char *path)
{
    for (size_t i = 0; i < nmodules; i++)
        if (strcmp(modules[i].path, path) == 0)
            return &modules[i];
    return NULL;
}

struct p11_module *p11_module_find(const char *path, char *err, size_t errlen)
{
    pthread_mutex_lock(&modules_lock);
    struct p11_module *m = module_named(path);
    if (m != NULL)
        goto out;
    if (nmodules == MAX_MODULES) {
        snprintf(err, errlen, "more than %d PKCS#11 modules", MAX_MODULES);
        goto out;
    }
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (dl == NULL) {
        snprintf(err, errlen, "%s is not loaded in this process", path);
        goto out;
    }
    CK_C_GetFunctionList get =
        (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR fl = NULL;
    if (get == NULL || get(&fl) != CKR_OK || fl == NULL) {
        snprintf(err, errlen, "%s has no PKCS#11 function list", path);
        dlclose(dl);
        goto out;
    }
    char *copy = strdup(path);
    if (copy == NULL) {
        snprintf(err, errlen, "out of memory");
        dlclose(dl);
        goto out;
    }
    m = &modules[nmodules++];
    m->path = copy;
    m->dl = dl;
    m->fl = fl;
    atomic_init(&m->inside, 0);
    atomic_init(&m->waiting, 0);
    atomic_init(&m->stalled, false);
    atomic_init(&m->sign_ns, 0);
    pthread_mutex_init(&m->place_lock, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(&m->place_freed, &monotonic);
    pthread_condattr_destroy(&monotonic);
    pthread_mutex_init(&m->idle_lock, NULL);
    m->nidle = 0;
out:
    pthread_mutex_unlock(&modules_lock);
    return m;
}

static int take_place(struct p11_module *m, int max_inside)
{
    if (atomic_fetch_add(&m->inside, 1) < max_inside)
        return 1;
    atomic_fetch_sub(&m->inside, 1);
    return 0;
}

static struct timespec deadline_after(long long ns)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    ns += t.tv_nsec;
    t.tv_sec += (time_t)(ns / 1000000000LL);
    t.tv_nsec = (long)(ns % 1000000000LL);
    return t;
}

int p11_module_enter(struct p11_module *m, int max_inside)
{
    if (max_inside > MAX_IDLE)
        max_inside = MAX_IDLE;
    if (take_place(m, max_inside))
        return 1;
    if (atomic_load(&m->stalled))
        return 0;
    long long wait_ns =
        2 * atomic_load_explicit(&m->sign_ns, memory_order_relaxed);
    wait_ns = wait_ns < PLACE_WAIT_MIN_NS   ? PLACE_WAIT_MIN_NS
              : wait_ns > PLACE_WAIT_MAX_NS ? PLACE_WAIT_MAX_NS
                                            : wait_ns;
    const struct timespec deadline = deadline_after(wait_ns);
    int entered = 0, timed_out = 0;
    pthread_mutex_lock(&m->place_lock);
    /* |waiting| is raised before trying again and |inside| lowered before a
     * leaver reads |waiting| (both sequentially consistent): either the
     * leaver signals or this try sees the place it freed. */
    atomic_fetch_add(&m->waiting, 1);
    while (!(entered = take_place(m, max_inside)) && !timed_out)
        timed_out = pthread_cond_timedwait(&m->place_freed, &m->place_lock,
                                           &deadline) == ETIMEDOUT;
    atomic_fetch_sub(&m->waiting, 1);
    pthread_mutex_unlock(&m->place_lock);
    if (!entered)
        atomic_store(&m->stalled, true);
    return entered;
}

void p11_module_leave(struct p11_module *m)
{
    atomic_fetch_sub(&m->inside, 1);
    if (atomic_load_explicit(&m->stalled, memory_order_relaxed))
        atomic_store(&m->stalled, false);
    if (atomic_load(&m->waiting) > 0) {
        pthread_mutex_lock(&m->place_lock);
        pthread_cond_signal(&m->place_freed);
        pthread_mutex_unlock(&m->place_lock);
    }
}

/* ---- sessions ---------------------------------------------------------------
 */

static int take_session(struct p11_module *m, CK_SLOT_ID slot,
                        CK_SESSION_HANDLE *out)
{
    int found = 0;
    pthread_mutex_lock(&m->idle_lock);
    for (size_t i = 0; i < m->nidle && !found; i++) {
        if (m->idle[i].slot == slot) {
            *out = m->idle[i].handle;
            m->idle[i] = m->idle[--m->nidle];
            found = 1;
        }
    }
    pthread_mutex_unlock(&m->idle_lock);
    return found || m->fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL,
                                         out) == CKR_OK;
}

/* A session that saw an error may hold an operation or be gone: closed. */
static void give_session(struct p11_module *m, CK_SLOT_ID slot,
                         CK_SESSION_HANDLE handle, int healthy)
{
    pthread_mutex_lock(&m->idle_lock);
    if (healthy && m->nidle < MAX_IDLE) {
        m->idle[m->nidle++] = (struct idle_session){slot, handle};
        handle = CK_INVALID_HANDLE;
    }
    pthread_mutex_unlock(&m->idle_lock);
    if (handle != CK_INVALID_HANDLE)
        m->fl->C_CloseSession(handle);
}

/* With no thread inside (pkcs11Quiesce): before the backend finalizes. */
static void close_idle(struct p11_module *m)
{
    pthread_mutex_lock(&m->idle_lock);
    for (size_t i = 0; i < m->nidle; i++)
        m->fl->C_CloseSession(m->idle[i].handle);
    m->nidle = 0;
    pthread_mutex_unlock(&m->idle_lock);
}

/* ---- one signature ------------------------------------------------------- */

struct digest_mechs {
    const char *name;
    int nid;
    CK_MECHANISM_TYPE hash;
    CK_RSA_PKCS_MGF_TYPE mgf1;
};

static const struct digest_mechs DIGESTS[] = {
    {"sha1", NID_sha1, CKM_SHA_1, CKG_MGF1_SHA1},
    {"sha224", NID_sha224, CKM_SHA224, CKG_MGF1_SHA224},
    {"sha256", NID_sha256, CKM_SHA256, CKG_MGF1_SHA256},
    {"sha384", NID_sha384, CKM_SHA384, CKG_MGF1_SHA384},
    {"sha512", NID_sha512, CKM_SHA512, CKG_MGF1_SHA512},
};

static const struct digest_mechs *digest_named(const char *name)
{
    for (size_t i = 0; i < sizeof(DIGESTS) / sizeof(DIGESTS[0]); i++)
        if (strcmp(DIGESTS[i].name, name) == 0)
            return &DIGESTS[i];
    return NULL;
}

/* PKCS#1 v1.5 signs a DigestInfo; the token's CKM_RSA_PKCS only pads. */
static int digest_info(int nid, const uint8_t *hash, size_t len,
                       unsigned char **out, int *out_len)
{
    X509_SIG *sig = X509_SIG_new();
    X509_ALGOR *alg = NULL;
    ASN1_OCTET_STRING *oct = NULL;
    int ok = 0;
    if (sig == NULL)
        return 0;
    X509_SIG_getm(sig, &alg, &oct);
    if (X509_ALGOR_set0(alg, OBJ_nid2obj(nid), V_ASN1_NULL, NULL) &&
        ASN1_OCTET_STRING_set(oct, hash, (int)len)) {
        *out = NULL;
        *out_len = i2d_X509_SIG(sig, out);
        ok = *out_len > 0;
    }
    X509_SIG_free(sig);
    return ok;
}

/* CKM_ECDSA returns r‖s; callers of a provider expect DER. */
static int ecdsa_der(const unsigned char *rs, size_t len, unsigned char **out,
                     size_t *out_len)
{
    if (len == 0 || len % 2 != 0)
        return 0;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, (int)(len / 2), NULL);
    BIGNUM *s = BN_bin2bn(rs + len / 2, (int)(len / 2), NULL);
    if (sig == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(sig, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(sig);
        return 0;
    }
    unsigned char *der = NULL;
    int n = i2d_ECDSA_SIG(sig, &der);
    ECDSA_SIG_free(sig);
    if (n <= 0)
        return 0;
    *out = OPENSSL_memdup(der, (size_t)n);
    OPENSSL_free(der);
    *out_len = (size_t)n;
    return *out != NULL;
}

int p11_sign(struct p11_module *m, const struct p11_key *key,
             const char *algorithm, const char *digest, const char *mgf1,
             int64_t salt, const uint8_t *data, size_t len, unsigned char **out,
             size_t *out_len)
{
    /* Ed25519 signs the message itself (CKM_EDDSA, pure): no digest */
    const int eddsa = strcmp(algorithm, "ed25519") == 0;
    const struct digest_mechs *d = eddsa ? NULL : digest_named(digest);
    const struct digest_mechs *mgf = mgf1[0] != '\0' ? digest_named(mgf1) : d;
    CK_RSA_PKCS_PSS_PARAMS pss;
    CK_MECHANISM mech = {0};
    unsigned char *info = NULL;
    int info_len = 0;
    const uint8_t *in = data;
    size_t in_len = len;

    if (!eddsa && (d == NULL || mgf == NULL))
        return 0;
    if (eddsa) {
        mech.mechanism = CKM_EDDSA; /* the signature is R || S, as Ed25519's */
    } else if (strcmp(algorithm, "ecdsa") == 0) {
        mech.mechanism = CKM_ECDSA;
    } else if (strcmp(algorithm, "rsa-pkcs1") == 0) {
        if (!digest_info(d->nid, data, len, &info, &info_len))
            return 0;
        mech.mechanism = CKM_RSA_PKCS;
        in = info;
        in_len = (size_t)info_len;
    } else if (strcmp(algorithm, "rsa-pss") == 0 && salt >= 0) {
        pss.hashAlg = d->hash;
        pss.mgf = mgf->mgf1;
        pss.sLen = (CK_ULONG)salt;
        mech.mechanism = CKM_RSA_PKCS_PSS;
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof(pss);
    } else {
        return 0;
    }

    CK_FUNCTION_LIST_PTR fl = m->fl;
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    unsigned char sig[MAX_SIGNATURE];
    CK_ULONG sig_len = sizeof(sig);
    int ok = 0;
    if (!take_session(m, key->slot, &session)) {
        OPENSSL_free(info);
        return 0;
    }
    const long long started = kb_now_ns();
    int healthy =
        fl->C_SignInit(session, &mech, key->object) == CKR_OK &&
        fl->C_Sign(session, (CK_BYTE_PTR)in, in_len, sig, &sig_len) == CKR_OK;
    if (healthy && mech.mechanism == CKM_ECDSA) {
        ok = ecdsa_der(sig, sig_len, out, out_len);
    } else if (healthy) {
        *out = OPENSSL_memdup(sig, sig_len);
        *out_len = sig_len;
        ok = *out != NULL;
    }
    give_session(m, key->slot, session, healthy);
    if (healthy) {
        /* a racy moving average (1/8 new) is all the wait bound needs */
        long long avg = atomic_load_explicit(&m->sign_ns, memory_order_relaxed);
        long long took = kb_now_ns() - started;
        atomic_store_explicit(&m->sign_ns,
                              avg == 0 ? took : avg + (took - avg) / 8,
                              memory_order_relaxed);
    }
    OPENSSL_cleanse(sig, sizeof(sig));
    OPENSSL_free(info);
    return ok;
}

/* ---- JS surface -----------------------------------------------------------
 */

/* pkcs11Quiesce(path, timeoutMs) -> boolean: true once no serving thread is
 * inside the module (its grants must be revoked first) and our idle sessions
 * are closed, false at the timeout. The backend finalizes the module only
 * after true. */
static napi_value quiesce(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], result;
    char path[4096];
    size_t len;
    uint32_t timeout_ms = 0;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 2 ||
        napi_get_value_string_utf8(env, argv[0], path, sizeof(path), &len) !=
            napi_ok ||
        napi_get_value_uint32(env, argv[1], &timeout_ms) != napi_ok)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "pkcs11Quiesce(path, timeoutMs)");
    pthread_mutex_lock(&modules_lock);
    struct p11_module *m = module_named(path);
    pthread_mutex_unlock(&modules_lock);
    int quiet = 1;
    /* Rare (closing a keyring) and short: a plain sleep loop will do. */
    const struct timespec tick = {0, 1000000};
    for (uint32_t waited = 0; m != NULL; waited++) {
        if (atomic_load(&m->inside) == 0)
            break;
        if (waited >= timeout_ms) {
            quiet = 0;
            break;
        }
        nanosleep(&tick, NULL);
    }
    if (m != NULL && quiet)
        close_idle(m);
    napi_get_boolean(env, quiet, &result);
    return result;
}

/* exitStuck(code): ends the process at once. Node's own exit joins its
 * worker threads, and the token thread inside a library call that never
 * returns would hold the process forever (thread-client.ts). */
static napi_value exit_stuck(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    int32_t code = 1;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok &&
        argc == 1)
        napi_get_value_int32(env, argv[0], &code);
    _exit(code);
}

napi_status pkcs11_sign_register(napi_env env, napi_value exports)
{
    const napi_property_descriptor props[] = {
        {"pkcs11Quiesce", NULL, quiesce, NULL, NULL, NULL, napi_default, NULL},
        {"exitStuck", NULL, exit_stuck, NULL, NULL, NULL, napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
