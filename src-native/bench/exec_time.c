/*
 * kbbench exec: wall time of N sequential runs of one command, from fork to
 * its exit, stdout and stderr discarded. Any non-zero exit stops the run.
 */
#include "bench.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int mode_exec(int argc, char **argv)
{
    int count = 10, i = 0;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 < argc && strcmp(argv[i], "--count") == 0)
            count = atoi(argv[i + 1]);
        else
            bench_die("exec: unknown option %s", argv[i]);
    }
    if (i + 1 >= argc || count < 1 || count > 100000)
        bench_die("exec: usage: --count N -- COMMAND ARGS...");
    char **cmd = argv + i + 1;

    struct lat lat = {0};
    for (int n = 0; n < count; n++) {
        uint64_t t0 = bench_now_ns();
        pid_t pid = fork();
        if (pid < 0)
            bench_die("fork failed");
        if (pid == 0) {
            int null = open("/dev/null", O_RDWR);
            dup2(null, 1);
            if (getenv("KBBENCH_EXEC_STDERR") == NULL)
                dup2(null, 2);
            execvp(cmd[0], cmd);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid)
            bench_die("waitpid failed");
        uint64_t dt = bench_now_ns() - t0;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            bench_die("%s exited with status %d on run %d (set "
                      "KBBENCH_EXEC_STDERR=1 to see why)",
                      cmd[0], WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                      n + 1);
        lat_add(&lat, dt);
    }
    printf("{\"mode\":\"exec\",\"count\":%d,", count);
    lat_print_json(&lat);
    printf("}\n");
    lat_free(&lat);
    return 0;
}
