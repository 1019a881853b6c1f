/*
 * kbbench pingpong: what this machine charges for the hop itself. N 64-byte
 * round trips over a socketpair, each side sleeping in read() until the
 * other writes, between two processes or two threads of one process: the
 * wake-ups a caller pays when it waits for the agent instead of polling,
 * without kmsbridge's code (notes.md reads it beside the agent's PING).
 */
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MESSAGE 64

struct echo {
    int fd;
    int count;
};

/* Echoes |count| messages back, then returns. */
static void *echo_run(void *arg)
{
    const struct echo *e = arg;
    char buf[MESSAGE];
    for (int i = 0; i < e->count; i++)
        if (read(e->fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) ||
            write(e->fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
            break;
    return NULL;
}

int mode_pingpong(int argc, char **argv)
{
    const char *between = "processes";
    int count = 10000;
    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--between") == 0)
            between = argv[i + 1];
        else if (strcmp(argv[i], "--count") == 0)
            count = atoi(argv[i + 1]);
        else
            bench_die("pingpong: unknown option %s", argv[i]);
    }
    int processes = strcmp(between, "processes") == 0;
    if (!processes && strcmp(between, "threads") != 0)
        bench_die("pingpong: --between processes|threads");
    if (count < 1 || count > 10000000)
        bench_die("pingpong: --count 1..10000000");

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        bench_die("socketpair failed");
    struct echo e = {sv[1], count + 1}; /* one untimed round first */
    pid_t child = -1;
    pthread_t thread;
    if (processes) {
        child = fork();
        if (child < 0)
            bench_die("fork failed");
        if (child == 0) {
            close(sv[0]); /* the parent's death then ends the echo (EOF) */
            echo_run(&e);
            _exit(0);
        }
        close(sv[1]); /* and the child's ends the timing */
        sv[1] = -1;
    } else if (pthread_create(&thread, NULL, echo_run, &e) != 0) {
        bench_die("pthread_create failed");
    }

    char buf[MESSAGE] = {0};
    struct lat lat = {0};
    for (int n = -1; n < count; n++) {
        uint64_t t0 = bench_now_ns();
        if (write(sv[0], buf, sizeof(buf)) != (ssize_t)sizeof(buf) ||
            read(sv[0], buf, sizeof(buf)) != (ssize_t)sizeof(buf))
            bench_die("pingpong: the echo side went away");
        if (n >= 0)
            lat_add(&lat, bench_now_ns() - t0);
    }
    if (processes)
        waitpid(child, NULL, 0);
    else
        pthread_join(thread, NULL);
    close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    printf("{\"mode\":\"pingpong\",\"between\":\"%s\",\"count\":%d,",
           processes ? "processes" : "threads", count);
    lat_print_json(&lat);
    printf("}\n");
    lat_free(&lat);
    return 0;
}
