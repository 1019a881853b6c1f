/*
 * A channel carries one request frame to a KeyService and brings back the
 * reply frame with the same request id. Two implementations: the agent
 * socket client (channel_agent.c) and, later, the N-API bridge. The provider
 * and the ENGINE only ever see this interface.
 */
#ifndef KMSBRIDGE_CHANNEL_H
#define KMSBRIDGE_CHANNEL_H

#include "wire.h"

/*
 * Error codes: the wire status codes (1..11) for errors the KeyService
 * reported, and these for errors found on this side of the channel.
 */
enum kb_local_error {
    KB_ERR_NO_AGENT = 100, /* nothing listens on the socket */
    KB_ERR_IO,             /* the connection broke */
    KB_ERR_PROTOCOL,       /* a malformed or unexpected reply */
    KB_ERR_LOCAL_TIMEOUT,  /* no reply within the request timeout */
    KB_ERR_NOMEM,
    KB_ERR_INVALID, /* the caller passed something unusable */
};

struct kb_err {
    int code;
    char msg[512];
};

void kb_err_set(struct kb_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

struct kb_channel;

struct kb_channel_ops {
    const char *name;
    /*
     * Sends the finished frame |req| (its request id is assigned by the
     * channel) and waits at most |timeout_ms| (0: the channel's default) for
     * the reply. Returns 1 with the decoded reply, whatever its status, or 0
     * with |err| set. Safe to call from many threads at once.
     */
    int (*call)(struct kb_channel *ch, struct kb_buf *req, unsigned timeout_ms,
                struct kb_wire_msg **reply, struct kb_err *err);
    void (*destroy)(struct kb_channel *ch);
};

struct kb_channel {
    const struct kb_channel_ops *ops;
};

/*
 * Calls and turns an error reply into |err| (code = status, message = the
 * KeyService's MESSAGE). Returns 1 only for a successful reply.
 */
int kb_channel_call(struct kb_channel *ch, struct kb_buf *req,
                    unsigned timeout_ms, struct kb_wire_msg **reply,
                    struct kb_err *err);

/*
 * The call the provider and the ENGINE make: finishes |req|, logs it as
 * |who| ("provider", "engine"), calls, and on failure fills |err| with a
 * message that names |uri| (may be NULL). Returns 1 only for a successful
 * reply. |err->code| is a KB_STATUS_* or KB_ERR_* value.
 */
int kb_channel_call_for(struct kb_channel *ch, struct kb_buf *req,
                        const char *who, const char *uri,
                        struct kb_wire_msg **reply, struct kb_err *err);

/*
 * A process-wide channel that replaces the agent channel for every provider
 * and ENGINE instance: the Node addon installs its N-API bridge (or an agent
 * channel to a socket the application chose) here. NULL: none.
 */
void kb_channel_set_override(struct kb_channel *ch);
struct kb_channel *kb_channel_override(void);

/* ---- the agent socket channel ------------------------------------------ */

#define KB_AGENT_CONNECT_TIMEOUT_MS 5000u
#define KB_AGENT_REQUEST_TIMEOUT_MS 30000u

struct kb_agent_config {
    const char *socket_path;     /* NULL: kb_agent_socket_path() */
    unsigned connect_timeout_ms; /* 0: default */
    unsigned request_timeout_ms; /* 0: KMSBRIDGE_TIMEOUT_MS or default */
    const char *peer_name;       /* sent in HELLO, for the agent's logs */
};

/*
 * The socket path: KMSBRIDGE_AGENT_SOCK, else
 * $XDG_RUNTIME_DIR/kmsbridge/agent.sock, else /tmp/kmsbridge-<uid>/agent.sock.
 */
void kb_agent_socket_path(char *buf, size_t len);

struct kb_channel *kb_agent_channel_new(const struct kb_agent_config *cfg);
const char *kb_agent_channel_socket(const struct kb_channel *ch);

#endif
