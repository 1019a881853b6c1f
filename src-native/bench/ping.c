/*
 * kbbench ping: the agent channel's own cost. N no-op (PING) requests, one
 * at a time, through channel_agent.c exactly as the provider sends its
 * requests; the connection is opened (and HELLO exchanged) before timing.
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"
#include "wire.h"

int mode_ping(int argc, char **argv)
{
    const char *socket_path = NULL;
    int count = 1000;
    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--socket") == 0)
            socket_path = argv[i + 1];
        else if (strcmp(argv[i], "--count") == 0)
            count = atoi(argv[i + 1]);
        else
            bench_die("ping: unknown option %s", argv[i]);
    }
    if (count < 1 || count > 10000000)
        bench_die("ping: --count 1..10000000");

    struct kb_agent_config cfg = {socket_path, 0, 10000, "kbbench"};
    struct kb_channel *ch = kb_agent_channel_new(&cfg);
    if (ch == NULL)
        bench_die("could not create the agent channel");
    struct kb_buf req = {0};
    kb_frame_begin(&req, 0, KB_MSG_PING, 0);
    if (!kb_frame_end(&req))
        bench_die("out of memory");

    struct lat lat = {0};
    for (int n = -1; n < count; n++) { /* n = -1: connect + HELLO, untimed */
        struct kb_wire_msg *reply = NULL;
        struct kb_err err = {0};
        uint64_t t0 = bench_now_ns();
        if (!kb_channel_call(ch, &req, 0, &reply, &err))
            bench_die("PING failed: %s", err.msg);
        uint64_t dt = bench_now_ns() - t0;
        kb_wire_msg_free(reply);
        if (n >= 0)
            lat_add(&lat, dt);
    }
    printf("{\"mode\":\"ping\",\"count\":%d,", count);
    lat_print_json(&lat);
    printf("}\n");
    lat_free(&lat);
    kb_buf_free(&req);
    ch->ops->destroy(ch);
    return 0;
}
