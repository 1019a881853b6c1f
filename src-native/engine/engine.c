/*
 * The legacy ENGINE "kmsbridge": binding, control commands, init/finish, and
 * the channel to the KeyService it shares with the provider's design (the
 * agent socket, or the process-wide override the Node addon installs).
 *
 * Loaded by the system openssl as `-engine /abs/path/kmsbridge.so`, as
 * `-engine kmsbridge` (OPENSSL_ENGINES or an [engine_section] in
 * openssl.cnf), or added in-process by the Node addon (kb_engine_register).
 *
 * Control commands (openssl.cnf engine section, -engine_opt, or
 * ENGINE_ctrl_cmd_string):
 *   AGENT_SOCKET        path of the agent socket
 *   TIMEOUT_MS          per-request timeout (default 30000)
 *   CONNECT_TIMEOUT_MS  connect + HELLO timeout (default 5000)
 *   REMOTE_PUBKEY       1: verify/encrypt with our keys go to the key manager
 *   RAND                1: offer the key manager's random bytes as RAND
 * As in the provider, the environment (KMSBRIDGE_AGENT_SOCK,
 * KMSBRIDGE_TIMEOUT_MS, KMSBRIDGE_REMOTE_PUBKEY, KMSBRIDGE_RAND) wins over
 * the configuration, so one openssl.cnf serves several agents.
 */
#include "engine.h"
#include "names.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../provider/errors.h"
#include "log.h"

enum kb_engine_cmd {
    KB_CMD_AGENT_SOCKET = ENGINE_CMD_BASE,
    KB_CMD_TIMEOUT_MS,
    KB_CMD_CONNECT_TIMEOUT_MS,
    KB_CMD_REMOTE_PUBKEY,
    KB_CMD_RAND,
};

static const ENGINE_CMD_DEFN kb_cmds[] = {
    {KB_CMD_AGENT_SOCKET, "AGENT_SOCKET",
     "path of the kmsbridge agent socket (KMSBRIDGE_AGENT_SOCK wins)",
     ENGINE_CMD_FLAG_STRING},
    {KB_CMD_TIMEOUT_MS, "TIMEOUT_MS",
     "per-request timeout in milliseconds (default 30000)",
     ENGINE_CMD_FLAG_NUMERIC},
    {KB_CMD_CONNECT_TIMEOUT_MS, "CONNECT_TIMEOUT_MS",
     "connect and handshake timeout in milliseconds (default 5000)",
     ENGINE_CMD_FLAG_NUMERIC},
    {KB_CMD_REMOTE_PUBKEY, "REMOTE_PUBKEY",
     "1: send verify and encrypt with kms keys to the key manager as well",
     ENGINE_CMD_FLAG_NUMERIC},
    {KB_CMD_RAND, "RAND",
     "1: offer random bytes from the key manager (audited) as RAND method",
     ENGINE_CMD_FLAG_NUMERIC},
    {0, NULL, NULL, 0},
};

/*
 * One state per process: every ENGINE object bound from this code (a
 * dynamic load and a configured one may coexist) talks to the same agent.
 */
static struct {
    pthread_mutex_t lock;
    char socket_path[256];
    unsigned timeout_ms;
    unsigned connect_timeout_ms;
    int remote_pubkey;
    struct kb_channel *chan; /* created on first use */
    int bound;               /* ENGINE objects bound: the methods' lifetime */
} st = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int env_true(const char *name)
{
    const char *v = getenv(name);
    return v != NULL &&
           (strcmp(v, "1") == 0 || strcasecmp(v, "yes") == 0 ||
            strcasecmp(v, "true") == 0 || strcasecmp(v, "on") == 0);
}

int kb_eng_remote_pubkey(void)
{
    return env_true("KMSBRIDGE_REMOTE_PUBKEY") ||
           __atomic_load_n(&st.remote_pubkey, __ATOMIC_RELAXED);
}

static struct kb_channel *kb_eng_channel(void)
{
    struct kb_channel *override = kb_channel_override();
    if (override != NULL)
        return override; /* the Node addon's bridge or its own agent channel */
    pthread_mutex_lock(&st.lock);
    if (st.chan == NULL) {
        const char *env_sock = getenv("KMSBRIDGE_AGENT_SOCK");
        struct kb_agent_config cfg = {0};
        char peer[160];

        snprintf(peer, sizeof(peer), "kmsbridge-engine/%s (%s)",
                 KB_ENGINE_VERSION, OpenSSL_version(OPENSSL_VERSION));
        cfg.peer_name = peer;
        if ((env_sock == NULL || env_sock[0] == '\0') &&
            st.socket_path[0] != '\0')
            cfg.socket_path = st.socket_path;
        cfg.connect_timeout_ms = st.connect_timeout_ms;
        if (kb_parse_ms(getenv("KMSBRIDGE_TIMEOUT_MS")) == 0)
            cfg.request_timeout_ms = st.timeout_ms;
        st.chan = kb_agent_channel_new(&cfg);
    }
    struct kb_channel *ch = st.chan;
    pthread_mutex_unlock(&st.lock);
    return ch;
}

int kb_eng_call(struct kb_buf *req, const char *uri, struct kb_wire_msg **reply)
{
    struct kb_err err = {0, ""};

    if (kb_channel_call_for(kb_eng_channel(), req, "engine", uri, reply, &err))
        return 1;
    kb_eng_raise(err.code, "%s", err.msg);
    return 0;
}

/* ---- ENGINE callbacks --------------------------------------------------- */

static int kb_eng_ctrl(ENGINE *e, int cmd, long i, void *p, void (*f)(void))
{
    (void)f;
    switch (cmd) {
    case KB_CMD_AGENT_SOCKET: {
        const char *path = p;
        int ok = 0;
        if (path == NULL || path[0] == '\0' ||
            strlen(path) >= sizeof(st.socket_path)) {
            kb_eng_raise(KB_R_INVALID_ARGUMENT,
                         "AGENT_SOCKET needs a socket path shorter than %zu "
                         "bytes",
                         sizeof(st.socket_path));
            return 0;
        }
        pthread_mutex_lock(&st.lock);
        /* A channel in use cannot be swapped: another thread may be in it. */
        if (st.chan == NULL || strcmp(st.socket_path, path) == 0) {
            snprintf(st.socket_path, sizeof(st.socket_path), "%s", path);
            ok = 1;
        }
        pthread_mutex_unlock(&st.lock);
        if (!ok)
            kb_eng_raise(KB_R_INVALID_ARGUMENT,
                         "AGENT_SOCKET must be set before the first key "
                         "operation");
        return ok;
    }
    case KB_CMD_TIMEOUT_MS:
    case KB_CMD_CONNECT_TIMEOUT_MS:
        if (i <= 0 || i > 3600000L) {
            kb_eng_raise(KB_R_INVALID_ARGUMENT,
                         "a timeout is 1 to 3600000 milliseconds, not %ld", i);
            return 0;
        }
        pthread_mutex_lock(&st.lock);
        if (cmd == KB_CMD_TIMEOUT_MS)
            st.timeout_ms = (unsigned)i;
        else
            st.connect_timeout_ms = (unsigned)i;
        pthread_mutex_unlock(&st.lock);
        return 1;
    case KB_CMD_REMOTE_PUBKEY:
        __atomic_store_n(&st.remote_pubkey, i != 0, __ATOMIC_RELAXED);
        return 1;
    case KB_CMD_RAND:
        return ENGINE_set_RAND(e, i != 0 ? kb_rand_method() : NULL);
    default:
        kb_eng_raise(KB_R_INVALID_ARGUMENT, "unknown control command %d", cmd);
        return 0;
    }
}

/*
 * Nothing to open: the channel connects on first use and reconnects after
 * an agent restart or a fork, so an engine initialised while the agent is
 * down still works once it is back.
 */
static int kb_eng_init(ENGINE *e)
{
    (void)e;
    KB_LOG("engine %s initialised in %s", KB_ENGINE_VERSION,
           OpenSSL_version(OPENSSL_VERSION));
    return 1;
}

static int kb_eng_finish(ENGINE *e)
{
    (void)e;
    return 1;
}

/*
 * This ENGINE object's EVP_PKEY_METHODs, in its ex_data. OpenSSL frees the
 * methods themselves with the engine (they are EVP_PKEY_FLAG_DYNAMIC), just
 * before it calls destroy, which frees this holder. No ex_data free callback:
 * OpenSSL runs those after unloading a dynamic engine's library.
 */
struct kb_eng_pmeths {
    EVP_PKEY_METHOD *rsa;
    EVP_PKEY_METHOD *ed25519;
};

static int pmeths_idx = -1; /* set while an engine is bound, under st.lock */

static int kb_pkey_meths(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids,
                         int nid)
{
    static const int kb_nids[] = {EVP_PKEY_RSA, EVP_PKEY_ED25519};

    if (pmeth == NULL) {
        *nids = kb_nids;
        return (int)(sizeof(kb_nids) / sizeof(kb_nids[0]));
    }
    const struct kb_eng_pmeths *m = ENGINE_get_ex_data(e, pmeths_idx);
    *pmeth = NULL;
    if (m != NULL && nid == EVP_PKEY_RSA)
        *pmeth = m->rsa;
    else if (m != NULL && nid == EVP_PKEY_ED25519)
        *pmeth = m->ed25519;
    return *pmeth != NULL;
}

/* Gives |e| methods of its own; OpenSSL owns them once this returns 1. */
static int set_pkey_meths(ENGINE *e)
{
    struct kb_eng_pmeths *m = calloc(1, sizeof(*m));

    if (m == NULL || pmeths_idx < 0)
        goto fail;
    m->rsa = kb_pkey_rsa_new();
    m->ed25519 = kb_pkey_ed25519_new();
    if (m->rsa == NULL || m->ed25519 == NULL ||
        !ENGINE_set_ex_data(e, pmeths_idx, m))
        goto fail;
    if (!ENGINE_set_pkey_meths(e, kb_pkey_meths)) {
        ENGINE_set_ex_data(e, pmeths_idx, NULL);
        goto fail;
    }
    return 1;
fail:
    if (m != NULL) {
        EVP_PKEY_meth_free(m->rsa);
        EVP_PKEY_meth_free(m->ed25519);
        free(m);
    }
    return 0;
}

/* state shared by every bound engine: set up by the first, freed by the last */
static int shared_setup(void)
{
    if (pmeths_idx < 0)
        pmeths_idx = ENGINE_get_ex_new_index(0, "kmsbridge pkey methods", NULL,
                                             NULL, NULL);
    return pmeths_idx >= 0 && kb_ekey_init() && kb_ec_setup();
}

static void shared_teardown(void)
{
    kb_ec_teardown();
    kb_ekey_cleanup();
    if (pmeths_idx >= 0)
        CRYPTO_free_ex_index(CRYPTO_EX_INDEX_ENGINE, pmeths_idx);
    pmeths_idx = -1;
}

static int kb_eng_destroy(ENGINE *e)
{
    pthread_mutex_lock(&st.lock);
    if (pmeths_idx >= 0) {
        free(ENGINE_get_ex_data(e, pmeths_idx));
        ENGINE_set_ex_data(e, pmeths_idx, NULL);
    }
    if (--st.bound == 0) {
        shared_teardown();
        if (st.chan != NULL) {
            st.chan->ops->destroy(st.chan);
            st.chan = NULL;
        }
        kb_eng_errors_unload();
    }
    pthread_mutex_unlock(&st.lock);
    return 1;
}

/*
 * ENGINE_by_id("/abs/path/kmsbridge.so") (as `openssl engine <path>` does)
 * binds with the path as the id: that names this library too.
 */
static int id_is_ours(const char *id)
{
    if (id == NULL || strcmp(id, KB_ENGINE_ID) == 0)
        return 1;
    const char *base = strrchr(id, '/');
    return base != NULL && strcmp(base + 1, KB_ENGINE_ID ".so") == 0;
}

static int kb_engine_bind(ENGINE *e, const char *id)
{
    if (!id_is_ours(id))
        return 0;
    kb_eng_errors_load();
    pthread_mutex_lock(&st.lock);
    int ok = st.bound > 0 || shared_setup();
    if (ok)
        st.bound++;
    else
        shared_teardown();
    pthread_mutex_unlock(&st.lock);
    if (!ok)
        return 0;

    /*
     * NO_REGISTER_ALL: ENGINE_register_all_complete() must not make our
     * methods the process default behind the application's back; -engine
     * and default_algorithms still can, and our methods pass every key that
     * is not ours to OpenSSL's own implementation.
     */
    if (!ENGINE_set_id(e, KB_ENGINE_ID) ||
        !ENGINE_set_name(e, KB_ENGINE_NAME) ||
        !ENGINE_set_flags(e, ENGINE_FLAGS_NO_REGISTER_ALL) ||
        !ENGINE_set_init_function(e, kb_eng_init) ||
        !ENGINE_set_finish_function(e, kb_eng_finish) ||
        !ENGINE_set_destroy_function(e, kb_eng_destroy) ||
        !ENGINE_set_ctrl_function(e, kb_eng_ctrl) ||
        !ENGINE_set_cmd_defns(e, kb_cmds) ||
        !ENGINE_set_load_privkey_function(e, kb_eng_load_privkey) ||
        !ENGINE_set_load_pubkey_function(e, kb_eng_load_privkey) ||
        !ENGINE_set_EC(e, kb_ec_method()) ||
        (env_true("KMSBRIDGE_RAND") && !ENGINE_set_RAND(e, kb_rand_method())))
        goto fail;
    /* last: from here on OpenSSL frees the methods with the engine */
    if (!set_pkey_meths(e))
        goto fail;
    KB_LOG("engine %s bound (remote pubkey %s, rand %s)", KB_ENGINE_VERSION,
           kb_eng_remote_pubkey() ? "on" : "off",
           ENGINE_get_RAND(e) != NULL ? "on" : "off");
    return 1;
fail:
    /*
     * Undo the count here and only here: whoever frees this ENGINE after a
     * failed bind must not call destroy a second time.
     */
    ENGINE_set_destroy_function(e, NULL);
    kb_eng_destroy(e);
    return 0;
}

/*
 * For the Node addon: adds the ENGINE to Node's OpenSSL so that
 * privateKeyEngine: 'kmsbridge' finds it by id. Returns 1 on success.
 */
int kb_engine_register(void);
int kb_engine_register(void)
{
    ENGINE *e = ENGINE_new();
    if (e == NULL)
        return 0;
    if (!kb_engine_bind(e, KB_ENGINE_ID) || !ENGINE_add(e)) {
        ENGINE_free(e);
        return 0;
    }
    ENGINE_free(e); /* the engine list holds its own reference */
    return 1;
}

#ifndef KB_NODE_ADDON
/*
 * The dynamic-engine entry points: the library is built with hidden
 * visibility, and OpenSSL's macros only say "extern".
 */
#pragma GCC visibility push(default)
IMPLEMENT_DYNAMIC_CHECK_FN()
IMPLEMENT_DYNAMIC_BIND_FN(kb_engine_bind)
#pragma GCC visibility pop
#endif
