/* Channel helpers shared by every channel implementation. */
#include "channel.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

void kb_err_set(struct kb_err *err, int code, const char *fmt, ...)
{
    if (err == NULL)
        return;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
}

int kb_channel_call(struct kb_channel *ch, struct kb_buf *req,
                    unsigned timeout_ms, struct kb_wire_msg **reply,
                    struct kb_err *err)
{
    if (!ch->ops->call(ch, req, timeout_ms, reply, err))
        return 0;
    if ((*reply)->status == 0)
        return 1;
    char *m = kb_wire_get_str(*reply, KB_TAG_MESSAGE);
    kb_err_set(err,
               (*reply)->status <= KB_STATUS_THROTTLED ? (*reply)->status
                                                       : KB_STATUS_INTERNAL,
               "%s", m != NULL ? m : kb_wire_status_name((*reply)->status));
    free(m);
    kb_wire_msg_free(*reply);
    *reply = NULL;
    return 0;
}

static _Atomic(struct kb_channel *) override_channel;

void kb_channel_set_override(struct kb_channel *ch)
{
    atomic_store(&override_channel, ch);
}

struct kb_channel *kb_channel_override(void)
{
    return atomic_load(&override_channel);
}
