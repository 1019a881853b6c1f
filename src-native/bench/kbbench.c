/*
 * kbbench: measurement modes for scripts/bench.mjs.
 *
 *   kbbench sign  --key URI|FILE [--provider-path DIR] [--provider NAME]...
 *                 [--engine ID|/path/engine.so] [--engine-ctrl NAME:VALUE]...
 *                 [--threads N] [--seconds S]
 *       EVP_PKEY_sign (EVP_DigestSign for Ed25519) in N threads for S
 *       seconds on a key loaded through OSSL_STORE, or through the ENGINE's
 *       load_privkey when --engine is given.
 *   kbbench tls   --port P [--host H] [--tls 1.2|1.3] [--threads N] [--seconds
 * S] full TLS handshakes (no resumption, no CA store loaded, peer not verified:
 * the figure is the server's cost) from N threads. kbbench exec  --count N --
 * COMMAND ARGS... wall time of N sequential runs of a command, process start
 * included. kbbench ping  --socket PATH --count N no-op (PING) round trips
 * through the agent channel (channel_agent.c).
 *   kbbench pingpong --between processes|threads --count N
 *       64-byte round trips over a socketpair, each side sleeping in read():
 *       the machine's own cost of a hop (pingpong.c).
 */
/* the ENGINE API is deprecated in OpenSSL 3; variants (c) and (f) measure it */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "bench.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/store.h>

#define LAT_MAX_SAMPLES (1u << 21)
#define MAX_OPS_PER_THREAD 50000000ull

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void lat_add(struct lat *l, uint64_t ns)
{
    if (l->n == l->cap) {
        if (l->cap >= LAT_MAX_SAMPLES)
            return;
        size_t cap = l->cap != 0 ? l->cap * 2 : 4096;
        uint64_t *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = ns;
}

void lat_merge(struct lat *dst, const struct lat *src)
{
    for (size_t i = 0; i < src->n; i++)
        lat_add(dst, src->v[i]);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void lat_print_json(struct lat *l)
{
    double med = 0, p99 = 0, mean = 0;
    if (l->n > 0) {
        qsort(l->v, l->n, sizeof(*l->v), cmp_u64);
        med = (double)l->v[l->n / 2] / 1000.0;
        p99 = (double)l->v[(l->n * 99) / 100] / 1000.0;
        long double sum = 0;
        for (size_t i = 0; i < l->n; i++)
            sum += l->v[i];
        mean = (double)(sum / l->n) / 1000.0;
    }
    printf("\"samples\":%zu,\"latUsMedian\":%.3f,\"latUsP99\":%.3f,"
           "\"latUsMean\":%.3f",
           l->n, med, p99, mean);
}

void lat_free(struct lat *l)
{
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

void bench_die(const char *fmt, ...)
{
    va_list ap;
    fputs("kbbench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

void bench_die_ssl(const char *what)
{
    fprintf(stderr, "kbbench: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

/* ---- sign -----------------------------------------------------------------
 */

struct sign_job {
    EVP_PKEY *pkey;
    const EVP_MD *md; /* NULL for Ed25519 */
    int eddsa;
    volatile int stop;
    pthread_barrier_t start;
};

struct sign_thread {
    pthread_t tid;
    struct sign_job *job;
    unsigned long long ops;
    struct lat lat;
    int failed;
};

static const unsigned char tbs[64] =
    "kmsbridge benchmark: the same 64 bytes are signed every time.";

/* One signature; returns its length or 0. */
static size_t sign_once(const struct sign_job *job, unsigned char *sig,
                        size_t cap)
{
    size_t len = cap;
    if (job->eddsa) {
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        int ok = m != NULL &&
                 EVP_DigestSignInit(m, NULL, NULL, NULL, job->pkey) == 1 &&
                 EVP_DigestSign(m, sig, &len, tbs, 32) == 1;
        EVP_MD_CTX_free(m);
        return ok ? len : 0;
    }
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(job->pkey, NULL);
    int ok =
        c != NULL && EVP_PKEY_sign_init(c) == 1 &&
        EVP_PKEY_CTX_set_signature_md(c, job->md) == 1 &&
        EVP_PKEY_sign(c, sig, &len, tbs, (size_t)EVP_MD_get_size(job->md)) == 1;
    EVP_PKEY_CTX_free(c);
    return ok ? len : 0;
}

static int verify_once(const struct sign_job *job, const unsigned char *sig,
                       size_t len)
{
    int ok;
    if (job->eddsa) {
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        ok = m != NULL &&
             EVP_DigestVerifyInit(m, NULL, NULL, NULL, job->pkey) == 1 &&
             EVP_DigestVerify(m, sig, len, tbs, 32) == 1;
        EVP_MD_CTX_free(m);
        return ok;
    }
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(job->pkey, NULL);
    ok = c != NULL && EVP_PKEY_verify_init(c) == 1 &&
         EVP_PKEY_CTX_set_signature_md(c, job->md) == 1 &&
         EVP_PKEY_verify(c, sig, len, tbs, (size_t)EVP_MD_get_size(job->md)) ==
             1;
    EVP_PKEY_CTX_free(c);
    return ok;
}

static void *sign_thread_main(void *arg)
{
    struct sign_thread *t = arg;
    unsigned char sig[1024];

    /* warm-up outside the timed window: opens this thread's connection */
    if (sign_once(t->job, sig, sizeof(sig)) == 0)
        t->failed = 1;
    pthread_barrier_wait(&t->job->start);
    while (!t->failed && !t->job->stop && t->ops < MAX_OPS_PER_THREAD) {
        uint64_t t0 = bench_now_ns();
        if (sign_once(t->job, sig, sizeof(sig)) == 0) {
            t->failed = 1;
            break;
        }
        lat_add(&t->lat, bench_now_ns() - t0);
        t->ops++;
    }
    return NULL;
}

static EVP_PKEY *load_store_key(const char *uri)
{
    OSSL_STORE_CTX *s = OSSL_STORE_open(uri, NULL, NULL, NULL, NULL);
    EVP_PKEY *pkey = NULL;
    if (s == NULL)
        bench_die_ssl("OSSL_STORE_open failed");
    OSSL_STORE_expect(s, OSSL_STORE_INFO_PKEY);
    while (pkey == NULL && !OSSL_STORE_eof(s)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(s);
        if (info == NULL)
            break;
        if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            pkey = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(s);
    if (pkey == NULL)
        bench_die_ssl("no private key in the store");
    return pkey;
}

static EVP_PKEY *load_engine_key(const char *engine, char **ctrls, int nctrls,
                                 const char *key)
{
    ENGINE *e;
    ENGINE_load_builtin_engines();
    if (strchr(engine, '/') != NULL) {
        e = ENGINE_by_id("dynamic");
        if (e == NULL || !ENGINE_ctrl_cmd_string(e, "SO_PATH", engine, 0) ||
            !ENGINE_ctrl_cmd_string(e, "LOAD", NULL, 0))
            bench_die_ssl("could not load the engine module");
    } else if ((e = ENGINE_by_id(engine)) == NULL) {
        bench_die_ssl("ENGINE_by_id failed");
    }
    for (int i = 0; i < nctrls; i++) {
        char *colon = strchr(ctrls[i], ':');
        if (colon != NULL)
            *colon = '\0';
        if (!ENGINE_ctrl_cmd_string(e, ctrls[i],
                                    colon != NULL ? colon + 1 : NULL, 0))
            bench_die_ssl("engine control failed");
    }
    if (!ENGINE_init(e))
        bench_die_ssl("ENGINE_init failed");
    EVP_PKEY *pkey = ENGINE_load_private_key(e, key, NULL, NULL);
    if (pkey == NULL)
        bench_die_ssl("ENGINE_load_private_key failed");
    return pkey;
}

int mode_sign(int argc, char **argv)
{
    const char *key = NULL, *engine = NULL;
    char *ctrls[16];
    int nctrls = 0, threads = 1;
    double seconds = 1.0;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            bench_die("%s needs a value", a);
        i++;
        if (strcmp(a, "--key") == 0) {
            key = v;
        } else if (strcmp(a, "--provider-path") == 0) {
            if (!OSSL_PROVIDER_set_default_search_path(NULL, v))
                bench_die_ssl("bad provider path");
        } else if (strcmp(a, "--provider") == 0) {
            if (OSSL_PROVIDER_load(NULL, v) == NULL)
                bench_die_ssl("could not load a provider");
        } else if (strcmp(a, "--engine") == 0) {
            engine = v;
        } else if (strcmp(a, "--engine-ctrl") == 0 && nctrls < 16) {
            ctrls[nctrls++] = argv[i]; /* the value */
        } else if (strcmp(a, "--threads") == 0) {
            threads = atoi(v);
        } else if (strcmp(a, "--seconds") == 0) {
            seconds = atof(v);
        } else {
            bench_die("sign: unknown option %s", a);
        }
    }
    if (key == NULL || threads < 1 || threads > 256 || seconds <= 0 ||
        seconds > 600)
        bench_die(
            "sign: --key is required; --threads 1..256, --seconds up to 600");

    struct sign_job job = {0};
    job.pkey = engine != NULL ? load_engine_key(engine, ctrls, nctrls, key)
                              : load_store_key(key);
    job.eddsa = EVP_PKEY_is_a(job.pkey, "ED25519");
    job.md = EVP_PKEY_get_bits(job.pkey) == 384 ? EVP_sha384() : EVP_sha256();

    /* one signature checked with the public key before anything is timed */
    unsigned char sig[1024];
    size_t len = sign_once(&job, sig, sizeof(sig));
    if (len == 0)
        bench_die_ssl("signing failed");
    if (!verify_once(&job, sig, len))
        bench_die_ssl("the signature does not verify");

    struct sign_thread *ts = calloc((size_t)threads, sizeof(*ts));
    if (ts == NULL)
        bench_die("out of memory");
    pthread_barrier_init(&job.start, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++) {
        ts[i].job = &job;
        if (pthread_create(&ts[i].tid, NULL, sign_thread_main, &ts[i]) != 0)
            bench_die("pthread_create failed");
    }
    pthread_barrier_wait(&job.start);
    uint64_t t0 = bench_now_ns();
    struct timespec nap = {(time_t)seconds,
                           (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&nap, NULL);
    job.stop = 1;
    unsigned long long ops = 0;
    int failed = 0;
    struct lat all = {0};
    for (int i = 0; i < threads; i++) {
        pthread_join(ts[i].tid, NULL);
        ops += ts[i].ops;
        failed |= ts[i].failed;
        lat_merge(&all, &ts[i].lat);
        lat_free(&ts[i].lat);
    }
    double elapsed = (double)(bench_now_ns() - t0) / 1e9;
    if (failed)
        bench_die_ssl("a signature failed during the run");
    printf("{\"mode\":\"sign\",\"threads\":%d,\"ops\":%llu,\"seconds\":%.4f,"
           "\"opsPerSec\":%.2f,",
           threads, ops, elapsed, (double)ops / elapsed);
    lat_print_json(&all);
    printf("}\n");
    lat_free(&all);
    free(ts);
    pthread_barrier_destroy(&job.start);
    EVP_PKEY_free(job.pkey);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        bench_die("usage: kbbench sign|tls|exec|ping|pingpong [options] (see "
                  "kbbench.c)");
    if (strcmp(argv[1], "sign") == 0)
        return mode_sign(argc - 2, argv + 2);
    if (strcmp(argv[1], "tls") == 0)
        return mode_tls(argc - 2, argv + 2);
    if (strcmp(argv[1], "exec") == 0)
        return mode_exec(argc - 2, argv + 2);
    if (strcmp(argv[1], "ping") == 0)
        return mode_ping(argc - 2, argv + 2);
    if (strcmp(argv[1], "pingpong") == 0)
        return mode_pingpong(argc - 2, argv + 2);
    bench_die("unknown mode %s", argv[1]);
}
