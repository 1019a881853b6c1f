/* Channel helpers shared by every channel implementation. */
#include "channel.h"
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
               (*reply)->status <= KB_STATUS_BAD_SIGNATURE ? (*reply)->status
                                                           : KB_STATUS_INTERNAL,
               "%s", m != NULL ? m : kb_wire_status_name((*reply)->status));
    free(m);
    /*
     * The message comes from the peer and ends up on the application's
     * terminal and in its logs: no control characters (escape sequences,
     * forged log lines) get through.
     */
    for (char *c = err->msg; *c != '\0'; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
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

int kb_channel_call_for(struct kb_channel *ch, struct kb_buf *req,
                        const char *who, const char *uri,
                        struct kb_wire_msg **reply, struct kb_err *err)
{
    const char *for_uri = uri != NULL ? " for " : "";
    *reply = NULL;
    if (!kb_frame_end(req)) {
        kb_err_set(err, KB_ERR_INVALID,
                   "request too large or out of memory%s%s", for_uri,
                   uri != NULL ? uri : "");
        return 0;
    }
    if (ch == NULL) {
        kb_err_set(err, KB_ERR_NOMEM, "cannot create the agent channel");
        return 0;
    }
    uint16_t type = (uint16_t)((req->data[8] << 8) | req->data[9]);
    KB_LOG("%s -> %s %s (%zu bytes)", who, kb_wire_type_name(type),
           uri != NULL ? uri : "", req->len);
    if (kb_channel_call(ch, req, 0, reply, err)) {
        KB_LOG("%s <- %s_REPLY ok (%zu bytes)", who, kb_wire_type_name(type),
               (*reply)->raw_len);
        return 1;
    }
    /* the KeyService's messages name the key already; local failures do not */
    if (uri != NULL && strstr(err->msg, uri) == NULL &&
        err->code < KB_ERR_NO_AGENT) {
        size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof(err->msg) - n, " (%s)", uri);
    }
    return 0;
}
