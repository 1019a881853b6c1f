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
 * KMSBRIDGE_POLL_US sets the longest poll in microseconds (default 200; 0:
 * never poll), for machines where an idle core is not free: a container
 * with a CPU quota, a host billed by CPU time.
 */
#ifndef KB_SPIN_H
#define KB_SPIN_H

#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>

#define KB_SPIN_LIMIT_NS 150000 /* answers slower on average: sleep at once */
#define KB_SPIN_MAX_NS 200000   /* the longest a waiter polls, by default */

struct kb_spin {
    atomic_llong average_ns; /* of the time to an answer; 0 at first */
};

long long kb_now_ns(void);

/* How long the next wait may poll before sleeping; 0: sleep at once. */
long long kb_spin_budget(struct kb_spin *s);

/* Records how long a wait took, from the request to the answer. */
void kb_spin_record(struct kb_spin *s, long long took_ns);

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
