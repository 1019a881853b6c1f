/*
 * Fork, thread and recovery checks of the kmsbridge provider, as an
 * application sees it: the system libcrypto loads default + kmsbridge, a kms
 * key comes through OSSL_STORE, and EVP_DigestSign signs. Every signature is
 * verified here with the public half imported into the default provider, and
 * the first signature of each process/thread is written out so the test can
 * check a sample with the openssl CLI as well.
 *
 *   provider_stress fork    MODULES OUTDIR URI CHILDREN N
 *       loads and uses the key in the parent, then forks CHILDREN processes
 *       that each sign N times while the parent keeps signing (nginx's shape)
 *   provider_stress threads MODULES OUTDIR URI1 URI2 THREADS N
 *       THREADS threads sign N times each, alternating the one EVP_PKEY of
 *       URI1 they all share and an EVP_PKEY of URI2 each loaded for itself
 *   provider_stress series  MODULES OUTDIR URI SECONDS
 *       signs back to back for SECONDS, printing each failure with its
 *       duration and OpenSSL's error text, while the test kills, stops and
 *       restarts the agent; reports whether signing recovered in-process
 *
 * Output: "fail ..." lines and one "summary ..." line; exit status 0 only if
 * everything signed and verified (series: if it signed again after the last
 * failure). An alarm bounds the whole run: a hang ends as a failure.
 */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG_MAX 128

static const char *outdir;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The calling thread's OpenSSL errors as one line (and clears them). */
static void error_text(char *buf, size_t len)
{
    unsigned long e;
    const char *data;
    int flags;
    size_t n = 0;

    buf[0] = '\0';
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0 &&
           n + 1 < len) {
        char one[256];
        ERR_error_string_n(e, one, sizeof(one));
        int w = snprintf(buf + n, len - n, "%s%s%s%s", n > 0 ? " | " : "", one,
                         (flags & ERR_TXT_STRING) && data[0] ? ": " : "",
                         (flags & ERR_TXT_STRING) ? data : "");
        if (w < 0)
            break;
        n += (size_t)w < len - n ? (size_t)w : len - n - 1;
    }
    ERR_clear_error();
    for (char *c = buf; *c != '\0'; c++)
        if (*c == '\n')
            *c = ' ';
}

/* A kms key through OSSL_STORE, the way `openssl ... -key kms:...` does. */
static EVP_PKEY *load_key(const char *uri)
{
    OSSL_STORE_CTX *st =
        OSSL_STORE_open_ex(uri, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    EVP_PKEY *pkey = NULL;

    if (st == NULL)
        return NULL;
    OSSL_STORE_expect(st, OSSL_STORE_INFO_PKEY);
    while (pkey == NULL && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);
        if (info == NULL)
            break;
        if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            pkey = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(st);
    return pkey;
}

/* The public half, held by the default provider: the independent verifier. */
static EVP_PKEY *public_half(EVP_PKEY *key)
{
    unsigned char *der = NULL;
    int len = i2d_PUBKEY(key, &der);
    const unsigned char *p = der;
    EVP_PKEY *pub = NULL;

    if (len > 0)
        pub = d2i_PUBKEY_ex(NULL, &p, len, NULL, "provider=default");
    OPENSSL_free(der);
    return pub;
}

/*
 * Signs |msg| with SHA-256 and verifies the signature with |pub|.
 * Returns 1 if both worked; on failure fills |why|. With |sample| set, writes
 * the message and signature to OUTDIR/<sample>.msg and .sig.
 */
static int sign_verify(EVP_PKEY *key, EVP_PKEY *pub, const char *msg,
                       const char *sample, char *why, size_t whylen)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char sig[1024];
    size_t siglen = sizeof(sig);
    int ok = 0;

    why[0] = '\0';
    if (md == NULL ||
        EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, key, NULL) != 1 ||
        EVP_DigestSign(md, sig, &siglen, (const unsigned char *)msg,
                       strlen(msg)) != 1) {
        error_text(why, whylen);
        if (why[0] == '\0')
            snprintf(why, whylen, "signing failed with no error queued");
        goto done;
    }
    EVP_MD_CTX_free(md);
    md = EVP_MD_CTX_new();
    if (md == NULL ||
        EVP_DigestVerifyInit_ex(md, NULL, "SHA256", NULL, "provider=default",
                                pub, NULL) != 1 ||
        EVP_DigestVerify(md, sig, siglen, (const unsigned char *)msg,
                         strlen(msg)) != 1) {
        error_text(why, whylen);
        snprintf(why + strlen(why), whylen - strlen(why),
                 "%sthe signature does not verify", why[0] ? " | " : "");
        goto done;
    }
    ok = 1;
    if (sample != NULL && outdir != NULL) {
        char path[4096];
        FILE *f;
        snprintf(path, sizeof(path), "%s/%s.msg", outdir, sample);
        if ((f = fopen(path, "wb")) != NULL) {
            fwrite(msg, 1, strlen(msg), f);
            fclose(f);
        }
        snprintf(path, sizeof(path), "%s/%s.sig", outdir, sample);
        if ((f = fopen(path, "wb")) != NULL) {
            fwrite(sig, 1, siglen, f);
            fclose(f);
        }
    }
done:
    EVP_MD_CTX_free(md);
    return ok;
}

/* Signs |n| messages tagged |tag|; returns the number that failed. */
static int sign_many(EVP_PKEY *key, EVP_PKEY *pub, const char *tag, int n)
{
    int failed = 0;
    for (int i = 0; i < n; i++) {
        char msg[MSG_MAX], why[1024];
        snprintf(msg, sizeof(msg), "%s message %d", tag, i);
        if (!sign_verify(key, pub, msg, i == 0 ? tag : NULL, why,
                         sizeof(why))) {
            printf("fail %s #%d: %s\n", tag, i, why);
            fflush(stdout);
            failed++;
        }
    }
    return failed;
}

/* ---- fork --------------------------------------------------------------- */

static int run_fork(const char *uri, int children, int n)
{
    EVP_PKEY *key = load_key(uri), *pub;
    char why[1024];

    if (key == NULL || (pub = public_half(key)) == NULL) {
        error_text(why, sizeof(why));
        printf("fail cannot load %s: %s\n", uri, why);
        return 1;
    }
    /* The parent has a live agent connection before it forks, like nginx. */
    int failed = sign_many(key, pub, "parent-before", 3);
    fflush(stdout);

    pid_t *pids = calloc((size_t)children, sizeof(pid_t));
    if (pids == NULL)
        return 1;
    for (int c = 0; c < children; c++) {
        pid_t pid = fork();
        if (pid < 0) {
            printf("fail fork: child %d\n", c);
            failed++;
            break;
        }
        if (pid == 0) {
            char tag[64];
            snprintf(tag, sizeof(tag), "child-%d", c);
            int f = sign_many(key, pub, tag, n);
            fflush(stdout);
            _exit(f == 0 ? 0 : 1);
        }
        pids[c] = pid;
    }
    /* The parent keeps signing while the children run: closing their copies
       of its connection must not disturb it. */
    failed += sign_many(key, pub, "parent-after", n);

    int bad_children = 0;
    for (int c = 0; c < children; c++) {
        int status = 0;
        if (pids[c] <= 0)
            continue;
        if (waitpid(pids[c], &status, 0) != pids[c] || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
            printf("fail child %d (pid %ld) status 0x%x\n", c, (long)pids[c],
                   status);
            bad_children++;
        }
    }
    printf("summary mode=fork children=%d per_child=%d parent_failed=%d "
           "children_failed=%d\n",
           children, n, failed, bad_children);
    free(pids);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    return failed == 0 && bad_children == 0 ? 0 : 1;
}

/* ---- threads ------------------------------------------------------------ */

struct thread_arg {
    int index;
    int n;
    EVP_PKEY *shared, *shared_pub;
    const char *own_uri;
    int signed_ok;
    int failed;
};

static void *thread_main(void *p)
{
    struct thread_arg *a = p;
    char tag[64], why[1024];
    EVP_PKEY *own = load_key(a->own_uri), *own_pub = NULL;

    if (own == NULL || (own_pub = public_half(own)) == NULL) {
        error_text(why, sizeof(why));
        printf("fail thread %d cannot load %s: %s\n", a->index, a->own_uri,
               why);
        a->failed = a->n;
        EVP_PKEY_free(own);
        return NULL;
    }
    for (int i = 0; i < a->n; i++) {
        int shared = i % 2 == 0;
        char msg[MSG_MAX];
        snprintf(tag, sizeof(tag), "thread-%d-%s", a->index,
                 shared ? "shared" : "own");
        snprintf(msg, sizeof(msg), "%s message %d", tag, i);
        if (sign_verify(shared ? a->shared : own,
                        shared ? a->shared_pub : own_pub, msg,
                        i < 2 ? tag : NULL, why, sizeof(why))) {
            a->signed_ok++;
        } else {
            printf("fail %s #%d: %s\n", tag, i, why);
            fflush(stdout);
            a->failed++;
        }
    }
    EVP_PKEY_free(own_pub);
    EVP_PKEY_free(own);
    return NULL;
}

static int run_threads(const char *uri1, const char *uri2, int threads, int n)
{
    EVP_PKEY *shared = load_key(uri1), *shared_pub;
    char why[1024];

    if (shared == NULL || (shared_pub = public_half(shared)) == NULL) {
        error_text(why, sizeof(why));
        printf("fail cannot load %s: %s\n", uri1, why);
        return 1;
    }
    pthread_t *tids = calloc((size_t)threads, sizeof(pthread_t));
    struct thread_arg *args = calloc((size_t)threads, sizeof(*args));
    if (tids == NULL || args == NULL)
        return 1;
    long long start = now_ms();
    for (int i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){i, n, shared, shared_pub, uri2, 0, 0};
        if (pthread_create(&tids[i], NULL, thread_main, &args[i]) != 0) {
            printf("fail pthread_create %d\n", i);
            args[i].failed = n;
            tids[i] = 0;
        }
    }
    int ok = 0, failed = 0;
    for (int i = 0; i < threads; i++) {
        if (tids[i] != 0)
            pthread_join(tids[i], NULL);
        ok += args[i].signed_ok;
        failed += args[i].failed;
    }
    printf("summary mode=threads threads=%d per_thread=%d signed=%d failed=%d "
           "ms=%lld\n",
           threads, n, ok, failed, now_ms() - start);
    free(tids);
    free(args);
    EVP_PKEY_free(shared_pub);
    EVP_PKEY_free(shared);
    return failed == 0 && ok == threads * n ? 0 : 1;
}

/* ---- series ------------------------------------------------------------- */

static int run_series(const char *uri, int seconds)
{
    EVP_PKEY *key = load_key(uri), *pub;
    char why[1024];

    if (key == NULL || (pub = public_half(key)) == NULL) {
        error_text(why, sizeof(why));
        printf("fail cannot load %s: %s\n", uri, why);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    long long end = now_ms() + (long long)seconds * 1000;
    long long max_fail_ms = 0;
    int ok = 0, failed = 0, ok_after_failure = 0;
    for (int i = 0; now_ms() < end; i++) {
        char msg[MSG_MAX];
        snprintf(msg, sizeof(msg), "series message %d", i);
        long long t0 = now_ms();
        if (sign_verify(key, pub, msg, i == 0 ? "series" : NULL, why,
                        sizeof(why))) {
            ok++;
            if (failed > 0)
                ok_after_failure++;
        } else {
            long long took = now_ms() - t0;
            if (took > max_fail_ms)
                max_fail_ms = took;
            failed++;
            ok_after_failure = 0;
            printf("fail series #%d after %lld ms: %s\n", i, took, why);
            fflush(stdout);
            /* A failing agent should not be hammered: back off a little. */
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (i % 50 == 0) {
            printf("progress signed=%d failed=%d\n", ok, failed);
            fflush(stdout);
        }
    }
    printf("summary mode=series signed=%d failed=%d max_fail_ms=%lld "
           "ok_after_last_failure=%d\n",
           ok, failed, max_fail_ms, ok_after_failure);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    return ok > 0 && (failed == 0 || ok_after_failure > 0) ? 0 : 1;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: provider_stress fork MODULES OUTDIR URI CHILDREN N\n"
            "       provider_stress threads MODULES OUTDIR URI1 URI2 THREADS "
            "N\n"
            "       provider_stress series MODULES OUTDIR URI SECONDS\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        return usage();
    const char *mode = argv[1];
    outdir = argv[3];

    /* Everything must finish: a hang shows up as SIGALRM, never as a stuck
       test run. */
    alarm(300);
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* default first: OpenSSL 3.0 hands generic fetches to the first loaded */
    if (!OSSL_PROVIDER_set_default_search_path(NULL, argv[2]) ||
        OSSL_PROVIDER_load(NULL, "default") == NULL ||
        OSSL_PROVIDER_load(NULL, "kmsbridge") == NULL) {
        char why[1024];
        error_text(why, sizeof(why));
        printf("fail cannot load the providers from %s: %s\n", argv[2], why);
        return 1;
    }
    if (strcmp(mode, "fork") == 0 && argc == 7)
        return run_fork(argv[4], atoi(argv[5]), atoi(argv[6]));
    if (strcmp(mode, "threads") == 0 && argc == 8)
        return run_threads(argv[4], argv[5], atoi(argv[6]), atoi(argv[7]));
    if (strcmp(mode, "series") == 0 && argc == 6)
        return run_series(argv[4], atoi(argv[5]));
    return usage();
}
