/*
 * The engine's optional RAND_METHOD: random bytes from the key manager, for
 * hosts without a trusted entropy source or where every draw must appear in
 * the key manager's audit log. Offered only when asked for (KMSBRIDGE_RAND=1
 * or the RAND control command), and used only when the application makes
 * the engine its RAND default (`-engine`, or default_algorithms = RAND).
 */
#include "engine.h"

#include <string.h>

#include "../provider/errors.h"
#include "log.h"

static int kb_rand_bytes(unsigned char *buf, int num)
{
    size_t want = num > 0 ? (size_t)num : 0, done = 0;

    while (done < want) {
        size_t n = want - done;
        if (n > KB_WIRE_MAX_RANDOM)
            n = KB_WIRE_MAX_RANDOM;

        struct kb_buf req = {0};
        struct kb_wire_msg *reply = NULL;
        kb_frame_begin(&req, 0, KB_MSG_RANDOM, 0);
        kb_frame_u32(&req, KB_TAG_LENGTH, (uint32_t)n);
        int ok = kb_eng_call(&req, NULL, &reply);
        kb_buf_free(&req);
        if (!ok)
            return 0;
        const struct kb_wire_field *r = kb_wire_find(reply, KB_TAG_RESULT);
        if (r == NULL || r->len != n) {
            kb_eng_raise(KB_R_PROTOCOL,
                         "asked the key manager for %zu random bytes, got %u",
                         n, r != NULL ? r->len : 0);
            kb_wire_msg_free(reply);
            return 0;
        }
        memcpy(buf + done, r->val, n);
        kb_wire_msg_free(reply);
        done += n;
    }
    KB_LOG("engine random: %zu bytes from the key manager", want);
    return 1;
}

/* The key manager seeds itself; there is nothing to report or to add. */
static int kb_rand_status(void)
{
    return 1;
}

static const RAND_METHOD kb_rand = {
    NULL,           /* seed: the key manager takes no seed from us */
    kb_rand_bytes,  /* bytes */
    NULL,           /* cleanup */
    NULL,           /* add */
    kb_rand_bytes,  /* pseudorand: the same, never weaker */
    kb_rand_status, /* status */
};

const RAND_METHOD *kb_rand_method(void)
{
    return &kb_rand;
}
