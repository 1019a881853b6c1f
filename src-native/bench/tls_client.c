/*
 * kbbench tls: full TLS handshakes against a local server from N threads.
 * Each connection is new: no session, no ticket, no CA store loaded (the
 * peer is not verified), so every handshake makes the server sign.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAX_HANDSHAKES_PER_THREAD 10000000ull

struct tls_job {
    SSL_CTX *ctx;
    struct sockaddr_in addr;
    volatile int stop;
    pthread_barrier_t start;
};

struct tls_thread {
    pthread_t tid;
    struct tls_job *job;
    unsigned long long ok, failed;
    struct lat lat;
};

static int handshake_once(struct tls_job *job)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&job->addr, sizeof(job->addr)) != 0) {
        close(fd);
        return 0;
    }
    SSL *ssl = SSL_new(job->ctx);
    int ok = ssl != NULL && SSL_set_fd(ssl, fd) == 1 && SSL_connect(ssl) == 1;
    if (ok) {
        /* close_notify, then wait for the server to close its side */
        SSL_shutdown(ssl);
        shutdown(fd, SHUT_WR);
        char buf[512];
        for (int i = 0; i < 64 && read(fd, buf, sizeof(buf)) > 0; i++)
            ;
    }
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    return ok;
}

static void *tls_thread_main(void *arg)
{
    struct tls_thread *t = arg;
    pthread_barrier_wait(&t->job->start);
    while (!t->job->stop && t->ok + t->failed < MAX_HANDSHAKES_PER_THREAD) {
        uint64_t t0 = bench_now_ns();
        if (handshake_once(t->job)) {
            lat_add(&t->lat, bench_now_ns() - t0);
            t->ok++;
        } else {
            t->failed++;
            if (t->failed > 100 && t->failed > t->ok)
                break; /* the server is gone: stop hammering it */
        }
    }
    return NULL;
}

int mode_tls(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, threads = 1, version = TLS1_3_VERSION;
    double seconds = 1.0;

    for (int i = 0; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (strcmp(a, "--host") == 0)
            host = v;
        else if (strcmp(a, "--port") == 0)
            port = atoi(v);
        else if (strcmp(a, "--threads") == 0)
            threads = atoi(v);
        else if (strcmp(a, "--seconds") == 0)
            seconds = atof(v);
        else if (strcmp(a, "--tls") == 0)
            version = strcmp(v, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
        else
            bench_die("tls: unknown option %s", a);
    }
    if (port <= 0 || port > 65535 || threads < 1 || threads > 256 ||
        seconds <= 0 || seconds > 600)
        bench_die(
            "tls: --port is required; --threads 1..256, --seconds up to 600");

    struct tls_job job = {0};
    job.addr.sin_family = AF_INET;
    job.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &job.addr.sin_addr) != 1)
        bench_die("tls: --host must be an IPv4 address");
    job.ctx = SSL_CTX_new(TLS_client_method());
    if (job.ctx == NULL || !SSL_CTX_set_min_proto_version(job.ctx, version) ||
        !SSL_CTX_set_max_proto_version(job.ctx, version))
        bench_die_ssl("SSL_CTX_new failed");
    SSL_CTX_set_verify(job.ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(job.ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(job.ctx, SSL_OP_NO_TICKET);

    /* one handshake first: fails fast if the server is not serving */
    if (!handshake_once(&job))
        bench_die_ssl("the first handshake failed");

    struct tls_thread *ts = calloc((size_t)threads, sizeof(*ts));
    if (ts == NULL)
        bench_die("out of memory");
    pthread_barrier_init(&job.start, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++) {
        ts[i].job = &job;
        if (pthread_create(&ts[i].tid, NULL, tls_thread_main, &ts[i]) != 0)
            bench_die("pthread_create failed");
    }
    pthread_barrier_wait(&job.start);
    uint64_t t0 = bench_now_ns();
    struct timespec nap = {(time_t)seconds,
                           (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&nap, NULL);
    job.stop = 1;
    unsigned long long ok = 0, failed = 0;
    struct lat all = {0};
    for (int i = 0; i < threads; i++) {
        pthread_join(ts[i].tid, NULL);
        ok += ts[i].ok;
        failed += ts[i].failed;
        lat_merge(&all, &ts[i].lat);
        lat_free(&ts[i].lat);
    }
    double elapsed = (double)(bench_now_ns() - t0) / 1e9;
    printf("{\"mode\":\"tls\",\"threads\":%d,\"handshakes\":%llu,\"failed\":%"
           "llu,\"seconds\":%.4f,"
           "\"perSec\":%.2f,",
           threads, ok, failed, elapsed, (double)ok / elapsed);
    lat_print_json(&all);
    printf("}\n");
    lat_free(&all);
    free(ts);
    SSL_CTX_free(job.ctx);
    return 0;
}
