/*
 * Benchmark hooks, used by `npm run bench` (scripts/bench/) and tests: the cost
 * of the N-API bridge itself. channelPing(count) sends |count| no-op PING
 * frames, one at a time, from the calling thread through the bridge channel
 * to the KeyService worker (kmsbridge.load() must have started it) and
 * returns a Float64Array of the round-trip time of each, in nanoseconds;
 * bridgeStats() says how the worker waited for them, napStats() how the agent
 * channel waited for its slower replies.
 */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "addon.h"
#include "channel.h"
#include "spin.h"
#include "wire.h"

#define MAX_PINGS 1000000u

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static napi_value channel_ping(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], buffer, result;
    uint32_t count = 0;
    void *data = NULL;

    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok ||
        argc < 1 || napi_get_value_uint32(env, argv[0], &count) != napi_ok ||
        count == 0 || count > MAX_PINGS)
        return addon_throw(env, "ERR_INVALID_ARG",
                           "channelPing(count): count from 1 to 1000000");
    if (napi_create_arraybuffer(env, count * sizeof(double), &data, &buffer) !=
            napi_ok ||
        napi_create_typedarray(env, napi_float64_array, count, buffer, 0,
                               &result) != napi_ok)
        return addon_throw(env, "ERR_NO_MEMORY", "out of memory");

    struct kb_channel *ch = bridge_channel(0);
    struct kb_buf req = {0};
    kb_frame_begin(&req, 0, KB_MSG_PING, 0);
    if (!kb_frame_end(&req))
        return addon_throw(env, "ERR_NO_MEMORY", "out of memory");
    double *out = data;
    for (uint32_t i = 0; i < count; i++) {
        struct kb_wire_msg *reply = NULL;
        struct kb_err err = {0};
        uint64_t t0 = now_ns();
        int ok = kb_channel_call(ch, &req, 0, &reply, &err);
        out[i] = (double)(now_ns() - t0);
        kb_wire_msg_free(reply);
        if (!ok) {
            kb_buf_free(&req);
            return addon_throw(env, "ERR_PING", err.msg);
        }
    }
    kb_buf_free(&req);
    return result;
}

/* A counter a stats object names. */
struct counter {
    const char *name;
    unsigned long long value;
};

/* An object of |n| named counters. */
static napi_value counters_object(napi_env env, const struct counter *c,
                                  size_t n)
{
    napi_value result, v;
    if (napi_create_object(env, &result) != napi_ok)
        return addon_throw(env, "ERR_NO_MEMORY", "out of memory");
    for (size_t i = 0; i < n; i++)
        if (napi_create_double(env, (double)c[i].value, &v) != napi_ok ||
            napi_set_named_property(env, result, c[i].name, v) != napi_ok)
            return addon_throw(env, "ERR_NO_MEMORY", "out of memory");
    return result;
}

/* bridgeStats() -> { workerPolls }: how many times the KeyService worker's
 * loop polled for a request instead of sleeping at once (spin.h's policy,
 * KMSBRIDGE_POLL_US). */
static napi_value bridge_stats(napi_env env, napi_callback_info info)
{
    (void)info;
    const struct counter c[] = {{"workerPolls", bridge_worker_polls()}};
    return counters_object(env, c, sizeof(c) / sizeof(c[0]));
}

/* napStats() -> { naps, wokenByTimer, noFreeCore }: how this process's
 * agent channel waited for replies too slow to poll for (spin.h). */
static napi_value nap_stats(napi_env env, napi_callback_info info)
{
    (void)info;
    struct kb_nap_counts n;
    kb_nap_counts(&n);
    const struct counter c[] = {{"naps", n.naps},
                                {"wokenByTimer", n.woken_by_timer},
                                {"noFreeCore", n.no_free_core}};
    return counters_object(env, c, sizeof(c) / sizeof(c[0]));
}

napi_status bench_register(napi_env env, napi_value exports)
{
    const napi_property_descriptor props[] = {
        {"channelPing", NULL, channel_ping, NULL, NULL, NULL, napi_default,
         NULL},
        {"bridgeStats", NULL, bridge_stats, NULL, NULL, NULL, napi_default,
         NULL},
        {"napStats", NULL, nap_stats, NULL, NULL, NULL, napi_default, NULL},
    };
    return napi_define_properties(env, exports,
                                  sizeof(props) / sizeof(props[0]), props);
}
