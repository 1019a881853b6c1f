/*
 * The kmsbridge wire format, version 1 (docs/wire-format.md).
 *
 * A frame is: length (4), request id (4), type (2), status (2), then fields
 * (tag 2, len 4, value). All integers are big-endian. This codec builds
 * frames into a growable buffer and decodes received frames with every
 * bound the spec asks for. It knows nothing about keys or OpenSSL.
 */
#ifndef KMSBRIDGE_WIRE_H
#define KMSBRIDGE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define KB_WIRE_VERSION 1u
#define KB_WIRE_HEADER_LEN 12u      /* length + id + type + status */
#define KB_WIRE_MIN_LENGTH 8u       /* smallest value of the length field */
#define KB_WIRE_MAX_LENGTH 1048576u /* largest value of the length field */
#define KB_WIRE_MAX_STRING 4096u
#define KB_WIRE_REPLY_BIT 0x8000u
#define KB_WIRE_MAX_RANDOM 65536u

enum kb_tag {
    KB_TAG_VERSION = 0x0001,
    KB_TAG_PEER_NAME = 0x0002,
    KB_TAG_MAX_FRAME = 0x0003,
    KB_TAG_URI = 0x0010,
    KB_TAG_KEYRING = 0x0011,
    KB_TAG_NAME = 0x0012,
    KB_TAG_KEY_SPEC = 0x0013,
    KB_TAG_KEY_TYPE = 0x0020,
    KB_TAG_BITS = 0x0021,
    KB_TAG_CURVE = 0x0022,
    KB_TAG_PUBLIC_KEY = 0x0023,
    KB_TAG_ALGORITHMS = 0x0024,
    KB_TAG_DIGESTS = 0x0025,
    KB_TAG_MANDATORY_DIGEST = 0x0026,
    KB_TAG_PSS_SALT = 0x0027,
    KB_TAG_MAX_MESSAGE = 0x0028,
    KB_TAG_ALGORITHM = 0x0030,
    KB_TAG_DIGEST = 0x0031,
    KB_TAG_MGF1_DIGEST = 0x0032,
    KB_TAG_SALT_LENGTH = 0x0033,
    KB_TAG_LABEL = 0x0034,
    KB_TAG_DATA = 0x0035,
    KB_TAG_PEER_KEY = 0x0036,
    KB_TAG_LENGTH = 0x0037,
    KB_TAG_SIGNATURE = 0x0038,
    KB_TAG_RESULT = 0x0040,
    KB_TAG_ENTRY = 0x0050,
    KB_TAG_MESSAGE = 0x0060,
};

enum kb_kind {
    KB_KIND_UNKNOWN =
        0, /* a tag this version does not know: kept, not dumped */
    KB_KIND_U32,
    KB_KIND_STRING,
    KB_KIND_BYTES,
    KB_KIND_NESTED,
};

enum kb_msg_type {
    KB_MSG_HELLO = 0x0001,
    KB_MSG_PING = 0x0002,
    KB_MSG_DESCRIBE = 0x0010,
    KB_MSG_SIGN = 0x0011,
    KB_MSG_DECRYPT = 0x0012,
    KB_MSG_DERIVE = 0x0013,
    KB_MSG_RANDOM = 0x0014,
    KB_MSG_VERIFY = 0x0015,
    KB_MSG_ENCRYPT = 0x0016,
    KB_MSG_CREATE = 0x0020,
    KB_MSG_LIST = 0x0021,
    KB_MSG_DELETE = 0x0022,
};

enum kb_status {
    KB_STATUS_OK = 0,
    KB_STATUS_NOT_FOUND = 1,
    KB_STATUS_ACCESS_DENIED = 2,
    KB_STATUS_UNSUPPORTED = 3,
    KB_STATUS_BACKEND_UNAVAILABLE = 4,
    KB_STATUS_TIMEOUT = 5,
    KB_STATUS_BAD_REQUEST = 6,
    KB_STATUS_INTERNAL = 7,
    KB_STATUS_ALREADY_EXISTS = 8,
    KB_STATUS_KEY_UNUSABLE = 9,
    KB_STATUS_THROTTLED = 10,
    KB_STATUS_BAD_SIGNATURE = 11,
};

/* Kind of a known tag, KB_KIND_UNKNOWN otherwise. */
enum kb_kind kb_wire_tag_kind(uint16_t tag);
/* Name of a known tag ("URI"), NULL otherwise. */
const char *kb_wire_tag_name(uint16_t tag);
/* Name of a known request type ("SIGN"), without the reply bit; or NULL. */
const char *kb_wire_type_name(uint16_t type);
/* Name of a status code ("NOT_FOUND"); unknown codes are "INTERNAL". */
const char *kb_wire_status_name(uint16_t status);

/* ---- building frames ---------------------------------------------------- */

struct kb_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed; /* out of memory or a bound exceeded: kb_frame_end fails */
};

void kb_buf_free(struct kb_buf *b);

/* Starts a frame; the length is patched in by kb_frame_end. */
void kb_frame_begin(struct kb_buf *b, uint32_t id, uint16_t type,
                    uint16_t status);
void kb_frame_u32(struct kb_buf *b, uint16_t tag, uint32_t value);
/* Adds a string field; a NULL string adds nothing. */
void kb_frame_str(struct kb_buf *b, uint16_t tag, const char *s);
void kb_frame_strn(struct kb_buf *b, uint16_t tag, const char *s, size_t n);
void kb_frame_bytes(struct kb_buf *b, uint16_t tag, const void *p, size_t n);
/* Opens a nested field; returns a mark for kb_frame_nested_end. */
size_t kb_frame_nested_begin(struct kb_buf *b, uint16_t tag);
void kb_frame_nested_end(struct kb_buf *b, size_t mark);
/* Patches the length field. Returns 1 if the frame is complete and valid. */
int kb_frame_end(struct kb_buf *b);
/* Overwrites the request id of a finished frame. */
void kb_frame_set_id(uint8_t *frame, uint32_t id);

/* ---- decoding frames ---------------------------------------------------- */

struct kb_wire_field {
    uint16_t tag;
    enum kb_kind kind;
    const uint8_t *val; /* points into the message's own copy of the frame */
    uint32_t len;
    uint32_t u32;              /* KB_KIND_U32 */
    struct kb_wire_field *sub; /* KB_KIND_NESTED: the entry's fields */
    size_t nsub;
};

struct kb_wire_msg {
    uint32_t id;
    uint16_t type;
    uint16_t status;
    uint8_t *raw; /* owned copy of the whole frame */
    size_t raw_len;
    struct kb_wire_field *fields;
    size_t nfields;
};

/*
 * Reads the length prefix of a frame: returns the total frame size (prefix
 * included), or 0 if the length is outside the spec's bounds.
 */
size_t kb_wire_frame_size(const uint8_t hdr[4]);

/*
 * Decodes one complete frame of exactly |len| bytes. Returns 1 and a new
 * message in |*out|, or 0 with a short reason in |err|.
 */
int kb_wire_decode(const uint8_t *frame, size_t len, struct kb_wire_msg **out,
                   char *err, size_t errlen);
void kb_wire_msg_free(struct kb_wire_msg *m);

/* Re-encodes a decoded message (unknown fields included) into |out|. */
int kb_wire_encode(const struct kb_wire_msg *m, struct kb_buf *out);

/* The canonical dump notation of the spec; malloc'ed, NULL on OOM. */
char *kb_wire_dump(const struct kb_wire_msg *m);

/* Lookups among a field list (top level or an ENTRY's fields). */
const struct kb_wire_field *kb_wire_fields_find(const struct kb_wire_field *f,
                                                size_t n, uint16_t tag);
const struct kb_wire_field *kb_wire_find(const struct kb_wire_msg *m,
                                         uint16_t tag);
/* Returns 1 and the value if the u32 field is present. */
int kb_wire_get_u32(const struct kb_wire_msg *m, uint16_t tag, uint32_t *v);
/* A malloc'ed NUL-terminated copy of a string field, or NULL if absent. */
char *kb_wire_strdup(const struct kb_wire_field *f);
char *kb_wire_get_str(const struct kb_wire_msg *m, uint16_t tag);

#endif
