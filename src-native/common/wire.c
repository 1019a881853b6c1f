/* The kmsbridge wire codec: see wire.h and docs/wire-format.md. */
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tag_info {
    uint16_t tag;
    const char *name;
    enum kb_kind kind;
};

static const struct tag_info tags[] = {
    {KB_TAG_VERSION, "VERSION", KB_KIND_U32},
    {KB_TAG_PEER_NAME, "PEER_NAME", KB_KIND_STRING},
    {KB_TAG_MAX_FRAME, "MAX_FRAME", KB_KIND_U32},
    {KB_TAG_URI, "URI", KB_KIND_STRING},
    {KB_TAG_KEYRING, "KEYRING", KB_KIND_STRING},
    {KB_TAG_NAME, "NAME", KB_KIND_STRING},
    {KB_TAG_KEY_SPEC, "KEY_SPEC", KB_KIND_STRING},
    {KB_TAG_KEY_TYPE, "KEY_TYPE", KB_KIND_STRING},
    {KB_TAG_BITS, "BITS", KB_KIND_U32},
    {KB_TAG_CURVE, "CURVE", KB_KIND_STRING},
    {KB_TAG_PUBLIC_KEY, "PUBLIC_KEY", KB_KIND_BYTES},
    {KB_TAG_ALGORITHMS, "ALGORITHMS", KB_KIND_STRING},
    {KB_TAG_DIGESTS, "DIGESTS", KB_KIND_STRING},
    {KB_TAG_MANDATORY_DIGEST, "MANDATORY_DIGEST", KB_KIND_STRING},
    {KB_TAG_PSS_SALT, "PSS_SALT", KB_KIND_STRING},
    {KB_TAG_MAX_MESSAGE, "MAX_MESSAGE", KB_KIND_U32},
    {KB_TAG_ALGORITHM, "ALGORITHM", KB_KIND_STRING},
    {KB_TAG_DIGEST, "DIGEST", KB_KIND_STRING},
    {KB_TAG_MGF1_DIGEST, "MGF1_DIGEST", KB_KIND_STRING},
    {KB_TAG_SALT_LENGTH, "SALT_LENGTH", KB_KIND_U32},
    {KB_TAG_LABEL, "LABEL", KB_KIND_BYTES},
    {KB_TAG_DATA, "DATA", KB_KIND_BYTES},
    {KB_TAG_PEER_KEY, "PEER_KEY", KB_KIND_BYTES},
    {KB_TAG_LENGTH, "LENGTH", KB_KIND_U32},
    {KB_TAG_SIGNATURE, "SIGNATURE", KB_KIND_BYTES},
    {KB_TAG_RESULT, "RESULT", KB_KIND_BYTES},
    {KB_TAG_ENTRY, "ENTRY", KB_KIND_NESTED},
    {KB_TAG_MESSAGE, "MESSAGE", KB_KIND_STRING},
};

static const struct tag_info *tag_lookup(uint16_t tag)
{
    for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++)
        if (tags[i].tag == tag)
            return &tags[i];
    return NULL;
}

enum kb_kind kb_wire_tag_kind(uint16_t tag)
{
    const struct tag_info *t = tag_lookup(tag);
    return t != NULL ? t->kind : KB_KIND_UNKNOWN;
}

const char *kb_wire_tag_name(uint16_t tag)
{
    const struct tag_info *t = tag_lookup(tag);
    return t != NULL ? t->name : NULL;
}

const char *kb_wire_type_name(uint16_t type)
{
    switch (type & ~KB_WIRE_REPLY_BIT) {
    case KB_MSG_HELLO:
        return "HELLO";
    case KB_MSG_PING:
        return "PING";
    case KB_MSG_DESCRIBE:
        return "DESCRIBE";
    case KB_MSG_SIGN:
        return "SIGN";
    case KB_MSG_DECRYPT:
        return "DECRYPT";
    case KB_MSG_DERIVE:
        return "DERIVE";
    case KB_MSG_RANDOM:
        return "RANDOM";
    case KB_MSG_VERIFY:
        return "VERIFY";
    case KB_MSG_ENCRYPT:
        return "ENCRYPT";
    case KB_MSG_CREATE:
        return "CREATE";
    case KB_MSG_LIST:
        return "LIST";
    case KB_MSG_DELETE:
        return "DELETE";
    default:
        return NULL;
    }
}

const char *kb_wire_status_name(uint16_t status)
{
    static const char *const names[] = {
        "OK",
        "NOT_FOUND",
        "ACCESS_DENIED",
        "UNSUPPORTED",
        "BACKEND_UNAVAILABLE",
        "TIMEOUT",
        "BAD_REQUEST",
        "INTERNAL",
        "ALREADY_EXISTS",
        "KEY_UNUSABLE",
        "THROTTLED",
        "BAD_SIGNATURE",
    };
    if (status < sizeof(names) / sizeof(names[0]))
        return names[status];
    return "INTERNAL";
}

/* ---- building ----------------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint16_t get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint8_t *buf_reserve(struct kb_buf *b, size_t n)
{
    if (b->failed)
        return NULL;
    if (n > KB_WIRE_MAX_LENGTH + 4 || b->len + n > KB_WIRE_MAX_LENGTH + 4) {
        b->failed = 1;
        return NULL;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (d == NULL) {
            b->failed = 1;
            return NULL;
        }
        b->data = d;
        b->cap = cap;
    }
    uint8_t *p = b->data + b->len;
    b->len += n;
    return p;
}

void kb_buf_free(struct kb_buf *b)
{
    if (b->data != NULL) {
        memset(b->data, 0, b->cap);
        free(b->data);
    }
    memset(b, 0, sizeof(*b));
}

void kb_frame_begin(struct kb_buf *b, uint32_t id, uint16_t type,
                    uint16_t status)
{
    b->len = 0;
    b->failed = 0;
    uint8_t *p = buf_reserve(b, KB_WIRE_HEADER_LEN);
    if (p == NULL)
        return;
    put_be32(p, 0);
    put_be32(p + 4, id);
    p[8] = (uint8_t)(type >> 8);
    p[9] = (uint8_t)type;
    p[10] = (uint8_t)(status >> 8);
    p[11] = (uint8_t)status;
}

static void field_header(struct kb_buf *b, uint16_t tag, uint32_t len)
{
    uint8_t *p = buf_reserve(b, 6);
    if (p == NULL)
        return;
    p[0] = (uint8_t)(tag >> 8);
    p[1] = (uint8_t)tag;
    put_be32(p + 2, len);
}

void kb_frame_u32(struct kb_buf *b, uint16_t tag, uint32_t value)
{
    field_header(b, tag, 4);
    uint8_t *p = buf_reserve(b, 4);
    if (p != NULL)
        put_be32(p, value);
}

void kb_frame_strn(struct kb_buf *b, uint16_t tag, const char *s, size_t n)
{
    if (s == NULL)
        return;
    if (n > KB_WIRE_MAX_STRING || memchr(s, 0, n) != NULL) {
        b->failed = 1;
        return;
    }
    kb_frame_bytes(b, tag, s, n);
}

void kb_frame_str(struct kb_buf *b, uint16_t tag, const char *s)
{
    if (s != NULL)
        kb_frame_strn(b, tag, s, strlen(s));
}

void kb_frame_bytes(struct kb_buf *b, uint16_t tag, const void *v, size_t n)
{
    if (n > KB_WIRE_MAX_LENGTH) {
        b->failed = 1;
        return;
    }
    field_header(b, tag, (uint32_t)n);
    if (n == 0)
        return;
    uint8_t *p = buf_reserve(b, n);
    if (p != NULL)
        memcpy(p, v, n);
}

size_t kb_frame_nested_begin(struct kb_buf *b, uint16_t tag)
{
    field_header(b, tag, 0);
    return b->len; /* the value starts here; its length sits 4 bytes before */
}

void kb_frame_nested_end(struct kb_buf *b, size_t mark)
{
    if (b->failed || mark < 4 || mark > b->len)
        return;
    put_be32(b->data + mark - 4, (uint32_t)(b->len - mark));
}

int kb_frame_end(struct kb_buf *b)
{
    if (b->failed || b->len < KB_WIRE_HEADER_LEN)
        return 0;
    size_t length = b->len - 4;
    if (length < KB_WIRE_MIN_LENGTH || length > KB_WIRE_MAX_LENGTH) {
        b->failed = 1;
        return 0;
    }
    put_be32(b->data, (uint32_t)length);
    return 1;
}

void kb_frame_set_id(uint8_t *frame, uint32_t id)
{
    put_be32(frame + 4, id);
}

/* ---- decoding ----------------------------------------------------------- */

size_t kb_wire_frame_size(const uint8_t hdr[4])
{
    uint32_t length = get_be32(hdr);
    if (length < KB_WIRE_MIN_LENGTH || length > KB_WIRE_MAX_LENGTH)
        return 0;
    return (size_t)length + 4;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return 0;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t extra;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= extra)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += extra + 1;
    }
    return 1;
}

static void fields_free(struct kb_wire_field *f, size_t n)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(f[i].sub);
    free(f);
}

/*
 * Decodes the fields in [p, p+n). depth 0 is the frame, 1 an ENTRY's value.
 */
static int decode_fields(const uint8_t *p, size_t n, int depth,
                         struct kb_wire_field **out, size_t *nout, char *err,
                         size_t errlen)
{
    struct kb_wire_field *f = NULL;
    size_t count = 0, cap = 0, off = 0;

    *out = NULL;
    *nout = 0;
    while (off < n) {
        if (n - off < 6) {
            fields_free(f, count);
            return fail(err, errlen, "truncated field header");
        }
        uint16_t tag = get_be16(p + off);
        uint32_t len = get_be32(p + off + 2);
        off += 6;
        if (len > n - off) {
            fields_free(f, count);
            return fail(err, errlen, "truncated field 0x%04x", tag);
        }
        const uint8_t *val = p + off;
        off += len;

        enum kb_kind kind = kb_wire_tag_kind(tag);
        struct kb_wire_field nf;
        memset(&nf, 0, sizeof(nf));
        nf.tag = tag;
        nf.kind = kind;
        nf.val = val;
        nf.len = len;

        const char *why = NULL;
        switch (kind) {
        case KB_KIND_U32:
            if (len != 4)
                why = "u32 field with length other than 4";
            else
                nf.u32 = get_be32(val);
            break;
        case KB_KIND_STRING:
            if (len > KB_WIRE_MAX_STRING)
                why = "string longer than 4096 bytes";
            else if (memchr(val, 0, len) != NULL)
                why = "NUL byte in string";
            else if (!utf8_valid(val, len))
                why = "string is not UTF-8";
            break;
        case KB_KIND_NESTED:
            if (depth >= 1) {
                why = "nested field inside a nested field";
                break;
            }
            if (!decode_fields(val, len, depth + 1, &nf.sub, &nf.nsub, err,
                               errlen)) {
                fields_free(f, count);
                return 0;
            }
            break;
        case KB_KIND_BYTES:
        case KB_KIND_UNKNOWN:
            break;
        }
        if (why == NULL && kind != KB_KIND_UNKNOWN && tag != KB_TAG_ENTRY &&
            kb_wire_fields_find(f, count, tag) != NULL)
            why = "duplicate field";
        if (why != NULL) {
            free(nf.sub);
            fields_free(f, count);
            return fail(err, errlen, "%s (%s)", why,
                        kb_wire_tag_name(tag) != NULL ? kb_wire_tag_name(tag)
                                                      : "?");
        }
        if (count == cap) {
            size_t ncap = cap != 0 ? cap * 2 : 8;
            struct kb_wire_field *nfld = realloc(f, ncap * sizeof(*f));
            if (nfld == NULL) {
                free(nf.sub);
                fields_free(f, count);
                return fail(err, errlen, "out of memory");
            }
            f = nfld;
            cap = ncap;
        }
        f[count++] = nf;
    }
    *out = f;
    *nout = count;
    return 1;
}

int kb_wire_decode(const uint8_t *frame, size_t len, struct kb_wire_msg **out,
                   char *err, size_t errlen)
{
    *out = NULL;
    if (len < 4)
        return fail(err, errlen, "truncated frame header");
    uint32_t length = get_be32(frame);
    if (length < KB_WIRE_MIN_LENGTH || length > KB_WIRE_MAX_LENGTH)
        return fail(err, errlen, "frame length %u out of bounds", length);
    if (len - 4 < length)
        return fail(err, errlen, "truncated frame");
    if (len - 4 > length)
        return fail(err, errlen, "bytes after the frame");

    struct kb_wire_msg *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return fail(err, errlen, "out of memory");
    m->raw = malloc(len);
    if (m->raw == NULL) {
        free(m);
        return fail(err, errlen, "out of memory");
    }
    memcpy(m->raw, frame, len);
    m->raw_len = len;
    m->id = get_be32(m->raw + 4);
    m->type = get_be16(m->raw + 8);
    m->status = get_be16(m->raw + 10);
    if (!decode_fields(m->raw + KB_WIRE_HEADER_LEN, len - KB_WIRE_HEADER_LEN, 0,
                       &m->fields, &m->nfields, err, errlen)) {
        kb_wire_msg_free(m);
        return 0;
    }
    *out = m;
    return 1;
}

void kb_wire_msg_free(struct kb_wire_msg *m)
{
    if (m == NULL)
        return;
    fields_free(m->fields, m->nfields);
    if (m->raw != NULL) {
        memset(m->raw, 0, m->raw_len);
        free(m->raw);
    }
    free(m);
}

static void encode_fields(struct kb_buf *b, const struct kb_wire_field *f,
                          size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (f[i].kind) {
        case KB_KIND_U32:
            kb_frame_u32(b, f[i].tag, f[i].u32);
            break;
        case KB_KIND_STRING:
            kb_frame_strn(b, f[i].tag, (const char *)f[i].val, f[i].len);
            break;
        case KB_KIND_NESTED: {
            size_t mark = kb_frame_nested_begin(b, f[i].tag);
            encode_fields(b, f[i].sub, f[i].nsub);
            kb_frame_nested_end(b, mark);
            break;
        }
        case KB_KIND_BYTES:
        case KB_KIND_UNKNOWN:
            kb_frame_bytes(b, f[i].tag, f[i].val, f[i].len);
            break;
        }
    }
}

int kb_wire_encode(const struct kb_wire_msg *m, struct kb_buf *out)
{
    kb_frame_begin(out, m->id, m->type, m->status);
    encode_fields(out, m->fields, m->nfields);
    return kb_frame_end(out);
}

/* ---- dump --------------------------------------------------------------- */

struct strbuf {
    char *s;
    size_t len, cap;
    int failed;
};

static void sb_add(struct strbuf *sb, const char *fmt, ...)
{
    if (sb->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(sb->s != NULL ? sb->s + sb->len : NULL,
                          sb->s != NULL ? sb->cap - sb->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            sb->failed = 1;
            return;
        }
        if (sb->s != NULL && sb->len + (size_t)n < sb->cap) {
            sb->len += (size_t)n;
            return;
        }
        size_t cap = sb->cap != 0 ? sb->cap : 256;
        while (cap <= sb->len + (size_t)n)
            cap *= 2;
        char *ns = realloc(sb->s, cap);
        if (ns == NULL) {
            sb->failed = 1;
            return;
        }
        sb->s = ns;
        sb->cap = cap;
    }
}

static void dump_fields(struct strbuf *sb, const struct kb_wire_field *f,
                        size_t n, int first)
{
    for (size_t i = 0; i < n; i++) {
        const char *name = kb_wire_tag_name(f[i].tag);
        if (f[i].kind == KB_KIND_UNKNOWN || name == NULL)
            continue;
        sb_add(sb, first ? "%s" : " %s", name);
        first = 0;
        switch (f[i].kind) {
        case KB_KIND_U32:
            sb_add(sb, "=%u", f[i].u32);
            break;
        case KB_KIND_STRING:
            sb_add(sb, "=\"");
            for (uint32_t k = 0; k < f[i].len; k++) {
                uint8_t c = f[i].val[k];
                if (c == '"' || c == '\\')
                    sb_add(sb, "\\%c", c);
                else if (c < 0x20 || c > 0x7e)
                    sb_add(sb, "\\x%02x", c);
                else
                    sb_add(sb, "%c", c);
            }
            sb_add(sb, "\"");
            break;
        case KB_KIND_BYTES:
            sb_add(sb, "=hex:");
            for (uint32_t k = 0; k < f[i].len; k++)
                sb_add(sb, "%02x", f[i].val[k]);
            break;
        case KB_KIND_NESTED:
            sb_add(sb, "{");
            dump_fields(sb, f[i].sub, f[i].nsub, 1);
            sb_add(sb, "}");
            break;
        case KB_KIND_UNKNOWN:
            break;
        }
    }
}

char *kb_wire_dump(const struct kb_wire_msg *m)
{
    struct strbuf sb = {NULL, 0, 0, 0};
    const char *tname = kb_wire_type_name(m->type);

    sb_add(&sb, "id=%u type=", m->id);
    if (tname != NULL)
        sb_add(&sb, "%s%s", tname,
               (m->type & KB_WIRE_REPLY_BIT) != 0 ? "_REPLY" : "");
    else
        sb_add(&sb, "0x%04x", m->type);
    sb_add(&sb, " status=%u", m->status);
    dump_fields(&sb, m->fields, m->nfields, 0);
    if (sb.failed) {
        free(sb.s);
        return NULL;
    }
    return sb.s;
}

/* ---- lookups ------------------------------------------------------------ */

const struct kb_wire_field *kb_wire_fields_find(const struct kb_wire_field *f,
                                                size_t n, uint16_t tag)
{
    for (size_t i = 0; i < n; i++)
        if (f[i].tag == tag)
            return &f[i];
    return NULL;
}

const struct kb_wire_field *kb_wire_find(const struct kb_wire_msg *m,
                                         uint16_t tag)
{
    return kb_wire_fields_find(m->fields, m->nfields, tag);
}

int kb_wire_get_u32(const struct kb_wire_msg *m, uint16_t tag, uint32_t *v)
{
    const struct kb_wire_field *f = kb_wire_find(m, tag);
    if (f == NULL || f->kind != KB_KIND_U32)
        return 0;
    *v = f->u32;
    return 1;
}

char *kb_wire_strdup(const struct kb_wire_field *f)
{
    if (f == NULL || f->kind != KB_KIND_STRING)
        return NULL;
    char *s = malloc((size_t)f->len + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, f->val, f->len);
    s[f->len] = '\0';
    return s;
}

char *kb_wire_get_str(const struct kb_wire_msg *m, uint16_t tag)
{
    return kb_wire_strdup(kb_wire_find(m, tag));
}
