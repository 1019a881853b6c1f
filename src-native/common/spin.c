#include "spin.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SAMPLE_NS 10000000 /* how often to look for a free core */

long long kb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Whether a core is probably free: no more threads runnable than cores
 * online (the 4th field of /proc/loadavg, the asking thread included),
 * sampled at most every SAMPLE_NS by whichever thread asks. */
static bool core_free(void)
{
    static atomic_llong sampled_at;
    static atomic_bool free_core;
    static atomic_long cores;
    long long t = kb_now_ns();
    if (t - atomic_load_explicit(&sampled_at, memory_order_relaxed) < SAMPLE_NS)
        return atomic_load_explicit(&free_core, memory_order_relaxed);
    atomic_store_explicit(&sampled_at, t, memory_order_relaxed);
    if (atomic_load_explicit(&cores, memory_order_relaxed) == 0)
        atomic_store_explicit(&cores, sysconf(_SC_NPROCESSORS_ONLN),
                              memory_order_relaxed);
    bool answer = false;
    char buf[128];
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n > 0) {
        buf[n] = '\0';
        long runnable = 0;
        if (sscanf(buf, "%*s %*s %*s %ld/", &runnable) == 1)
            answer =
                runnable <= atomic_load_explicit(&cores, memory_order_relaxed);
    }
    atomic_store_explicit(&free_core, answer, memory_order_relaxed);
    return answer;
}

static long long max_ns = KB_SPIN_MAX_NS;
static pthread_once_t max_once = PTHREAD_ONCE_INIT;

static void read_max(void)
{
    const char *v = getenv("KMSBRIDGE_POLL_US");
    char *end = NULL;
    long long us = v != NULL && *v != '\0' ? strtoll(v, &end, 10) : -1;
    if (end != NULL && *end == '\0' && us >= 0 && us <= 1000000)
        max_ns = us * 1000;
}

long long kb_spin_budget(struct kb_spin *s)
{
    pthread_once(&max_once, read_max);
    long long average =
        atomic_load_explicit(&s->average_ns, memory_order_relaxed);
    if (max_ns == 0 || average >= KB_SPIN_LIMIT_NS || !core_free())
        return 0;
    long long budget = 2 * average + 5000;
    return budget < max_ns ? budget : max_ns;
}

void kb_spin_record(struct kb_spin *s, long long took_ns)
{
    /* About the last eight answers; threads race on it harmlessly, each
     * update being a whole value. */
    long long average =
        atomic_load_explicit(&s->average_ns, memory_order_relaxed);
    atomic_store_explicit(&s->average_ns, average + (took_ns - average) / 8,
                          memory_order_relaxed);
}

/* A nap aims to wake this long before the answer; each one the answer beat
 * is this much shorter the next time. */
#define NAP_AIM_NS 15000
#define NAP_STEP_NS 20000

static atomic_ullong naps, naps_woken_by_timer, naps_no_free_core;

long long kb_nap_budget(struct kb_spin *s, long long *poll_ns)
{
    pthread_once(&max_once, read_max);
    long long average =
        atomic_load_explicit(&s->average_ns, memory_order_relaxed);
    if (max_ns == 0 || average < KB_SPIN_LIMIT_NS || average > KB_NAP_LIMIT_NS)
        return 0;
    if (!core_free()) {
        atomic_fetch_add_explicit(&naps_no_free_core, 1, memory_order_relaxed);
        return 0;
    }
    long long nap = atomic_load_explicit(&s->nap_ns, memory_order_relaxed);
    if (nap <= 0 || nap > average)
        nap = average - average / 4; /* a first guess; the average includes
                                        the wake-ups a nap is to save */
    *poll_ns = KB_NAP_POLL_NS < max_ns ? KB_NAP_POLL_NS : max_ns;
    return nap;
}

void kb_nap_record(struct kb_spin *s, long long nap_ns, long long polled_ns)
{
    atomic_fetch_add_explicit(&naps, 1, memory_order_relaxed);
    if (polled_ns >= 0)
        atomic_fetch_add_explicit(&naps_woken_by_timer, 1,
                                  memory_order_relaxed);
    long long step =
        polled_ns < 0 ? -NAP_STEP_NS : (polled_ns - NAP_AIM_NS) / 4;
    if (step > 2 * NAP_STEP_NS)
        step = 2 * NAP_STEP_NS; /* one slow answer is not a new pace */
    long long nap = nap_ns + step;
    atomic_store_explicit(&s->nap_ns, nap > NAP_STEP_NS ? nap : NAP_STEP_NS,
                          memory_order_relaxed);
}

void kb_nap_counts(struct kb_nap_counts *out)
{
    out->naps = atomic_load(&naps);
    out->woken_by_timer = atomic_load(&naps_woken_by_timer);
    out->no_free_core = atomic_load(&naps_no_free_core);
}

#define KB_SPIN_YIELD_NS 10000 /* between yields while polling memory */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

unsigned kb_spin_while(const atomic_uint *word, unsigned unchanged,
                       long long until_ns)
{
    long long next_yield = kb_now_ns() + KB_SPIN_YIELD_NS;
    unsigned v;
    while ((v = atomic_load_explicit(word, memory_order_acquire)) ==
           unchanged) {
        long long now = kb_now_ns();
        if (now >= until_ns)
            break;
        if (now >= next_yield) {
            sched_yield();
            next_yield = kb_now_ns() + KB_SPIN_YIELD_NS;
        } else {
            for (int i = 0; i < 32; i++)
                cpu_relax();
        }
    }
    return v;
}

ssize_t kb_spin_recv(int fd, void *buf, size_t len, long long budget_ns,
                     const atomic_bool *stop)
{
    long long until = kb_now_ns() + budget_ns;
    for (;;) {
        ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
        if (n >= 0 ||
            (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return n;
        if (kb_now_ns() >= until || (stop != NULL && atomic_load(stop))) {
            errno = EAGAIN;
            return -1;
        }
        sched_yield();
    }
}
