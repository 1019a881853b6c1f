/*
 * kbbench: the native half of `npm run bench` (scripts/bench.mjs drives it).
 * A benchmark tool, not part of kmsbridge.so or the addon: every mode prints
 * one JSON object on stdout and exits non-zero with a reason on stderr.
 */
#ifndef KMSBRIDGE_BENCH_H
#define KMSBRIDGE_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic clock in nanoseconds. */
uint64_t bench_now_ns(void);

/* A growable list of per-operation latencies, in nanoseconds. */
struct lat {
    uint64_t *v;
    size_t n, cap;
};

/* Records |ns|; silently drops samples past |max| (bounded memory). */
void lat_add(struct lat *l, uint64_t ns);
/* Appends every sample of |src| to |dst|. */
void lat_merge(struct lat *dst, const struct lat *src);
/* Sorts, then prints "latUsMedian", "latUsP99", "latUsMean" (no braces). */
void lat_print_json(struct lat *l);
void lat_free(struct lat *l);

/* Prints a message to stderr and exits 2. */
void bench_die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
/* Same, with OpenSSL's error queue appended. */
void bench_die_ssl(const char *what) __attribute__((noreturn));

int mode_sign(int argc, char **argv);
int mode_tls(int argc, char **argv);
int mode_exec(int argc, char **argv);
int mode_ping(int argc, char **argv);
int mode_pingpong(int argc, char **argv);

#endif
