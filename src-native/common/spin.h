/*
 * Polling before sleeping, for a thread that waits for another thread or
 * process to answer.
 *
 * A thread that sleeps for its answer costs a wake-up on both sides, and on
 * a virtual machine a wake-up costs more CPU than a short wait
 * (docs/bench/notes.md). So while a waiter's answers have been coming back
 * quickly (a moving average under KB_SPIN_LIMIT_NS) it first polls without
 * sleeping, yielding the core between tries to anything else runnable, for
 * up to twice that average (at most KB_SPIN_MAX_NS); then it sleeps as
 * before. Only while a core is free: when every core is taken, polling would
 * take one from the work the answer waits for. Slow answers (RSA, a slow key
 * manager) turn polling off by themselves, since they raise the average.
 *
 * Answers a little slower than that (an RSA signature: 150 µs to 4 ms) are
 * too slow to poll for from the start, but a sleeping waiter is woken up to
 * 50 µs after its answer on a virtual machine. While a core is free such a
 * waiter naps instead: it sleeps on its socket and a timer set shortly before
 * the answer is due, then polls for the rest (about 30 µs more CPU per
 * answer for 35–40 µs less latency, docs/bench/notes.md). How long to nap is
 * learned: a nap the answer beat gets shorter, one followed by a long poll
 * longer.
 *
 * KMSBRIDGE_POLL_US sets the longest poll in microseconds (default 200; 0:
 * never poll nor nap), for machines where an idle core is not free: a
 * container with a CPU quota, a host billed by CPU time.
 */
#ifndef KB_SPIN_H
#define KB_SPIN_H

#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>

#define KB_SPIN_LIMIT_NS 150000 /* answers slower on average: sleep at once */
#define KB_SPIN_MAX_NS 200000   /* the longest a waiter polls, by default */
#define KB_NAP_LIMIT_NS 4000000 /* answers slower on average: no nap */
#define KB_NAP_POLL_NS 100000   /* the longest poll after a nap */

struct kb_spin {
    atomic_llong average_ns; /* of the time to an answer; 0 at first */
    atomic_llong nap_ns;     /* learned nap before polling; 0: not yet */
};

long long kb_now_ns(void);

/* How long the next wait may poll before sleeping; 0: sleep at once. */
long long kb_spin_budget(struct kb_spin *s);

/* Records how long a wait took, from the request to the answer. */
void kb_spin_record(struct kb_spin *s, long long took_ns);

/* How long the next wait should sleep before it polls, and in |poll_ns| for
 * how long it may poll then; 0: no nap, sleep until the answer (or poll
 * from the start, kb_spin_budget). */
long long kb_nap_budget(struct kb_spin *s, long long *poll_ns);

/* Records how a nap of |nap_ns| went: |polled_ns| is how long the waiter
 * polled after it until the answer, or -1 if the answer came first. */
void kb_nap_record(struct kb_spin *s, long long nap_ns, long long polled_ns);

/* What naps did in this process, for tests and benchmarks: how many waits
 * napped, how many of those the timer woke before the answer, and how many
 * waits would have napped had a core been free. */
struct kb_nap_counts {
    unsigned long long naps, woken_by_timer, no_free_core;
};
void kb_nap_counts(struct kb_nap_counts *out);

/* Waits without sleeping until *|word| is no longer |unchanged| or the
 * monotonic clock reaches |until_ns|, pausing the core between looks and
 * yielding it every few microseconds (a yield is a system call, and on a
 * virtual machine a costly one); returns the value seen last. For answers
 * another thread of this process posts in memory. */
unsigned kb_spin_while(const atomic_uint *word, unsigned unchanged,
                       long long until_ns);

/* Reads socket |fd| without sleeping for up to |budget_ns|, yielding the
 * core between tries, and sooner once *|stop| (if given) is set: recv()'s
 * result, or -1 with EAGAIN when nothing came. */
ssize_t kb_spin_recv(int fd, void *buf, size_t len, long long budget_ns,
                     const atomic_bool *stop);

#endif
