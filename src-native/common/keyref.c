#include "keyref.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Reads one DER length; returns 0 on a malformed or non-minimal length. */
static int der_len(const unsigned char **p, const unsigned char *end,
                   size_t *len)
{
    if (*p >= end)
        return 0;
    unsigned char c = *(*p)++;
    if (c < 0x80) {
        *len = c;
        return 1;
    }
    size_t n = c & 0x7f;
    if (n == 0 || n > 3 || (size_t)(end - *p) < n || **p == 0)
        return 0;
    size_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | *(*p)++;
    if (v < 0x80)
        return 0; /* DER wants the short form */
    *len = v;
    return 1;
}

int kb_uri_valid(const char *uri)
{
    if (uri == NULL || strncmp(uri, "kms:", 4) != 0)
        return 0;
    const char *ring = uri + 4;
    const char *slash = strchr(ring, '/');
    if (slash == NULL || slash == ring || slash[1] == '\0')
        return 0;
    for (const char *c = uri; *c != '\0'; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return 0;
    return strlen(uri) <= 4096;
}

char *kb_keyref_parse_der(const unsigned char *der, size_t len)
{
    const unsigned char *p = der, *end = der + len;
    size_t l;

    if (p >= end || *p++ != 0x30 || !der_len(&p, end, &l) ||
        l != (size_t)(end - p))
        return NULL;
    /* version INTEGER 0 */
    if (end - p < 3 || p[0] != 0x02 || p[1] != 0x01 || p[2] != 0x00)
        return NULL;
    p += 3;
    /* uri UTF8String */
    if (p >= end || *p++ != 0x0c || !der_len(&p, end, &l) ||
        l != (size_t)(end - p) || l == 0)
        return NULL;
    if (memchr(p, 0, l) != NULL)
        return NULL;
    char *uri = malloc(l + 1);
    if (uri == NULL)
        return NULL;
    memcpy(uri, p, l);
    uri[l] = '\0';
    if (!kb_uri_valid(uri)) {
        free(uri);
        return NULL;
    }
    return uri;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

char *kb_keyref_parse_pem(const char *text, size_t len)
{
    static const char begin[] = "-----BEGIN " KB_KEYREF_PEM_LABEL "-----";
    static const char endm[] = "-----END " KB_KEYREF_PEM_LABEL "-----";
    const char *start = NULL, *stop;

    /* The block must start at the beginning of a line. */
    for (size_t i = 0; i + sizeof(begin) - 1 <= len; i++) {
        if ((i == 0 || text[i - 1] == '\n') &&
            memcmp(text + i, begin, sizeof(begin) - 1) == 0) {
            start = text + i + sizeof(begin) - 1;
            break;
        }
    }
    if (start == NULL)
        return NULL;
    size_t rest = len - (size_t)(start - text);
    stop = NULL;
    for (size_t i = 0; i + sizeof(endm) - 1 <= rest; i++) {
        if (memcmp(start + i, endm, sizeof(endm) - 1) == 0) {
            stop = start + i;
            break;
        }
    }
    if (stop == NULL)
        return NULL;

    size_t cap = (size_t)(stop - start) / 4 * 3 + 3;
    unsigned char *der = malloc(cap);
    if (der == NULL)
        return NULL;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (const char *c = start; c < stop; c++) {
        unsigned char ch = (unsigned char)*c;
        if (ch == '\r' || ch == '\n' || ch == ' ' || ch == '\t')
            continue;
        if (ch == '=') {
            pad++;
            continue;
        }
        int v = b64val(ch);
        if (v < 0 || pad > 0) {
            free(der);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            der[n++] = (unsigned char)(acc >> bits);
        }
    }
    char *uri = pad <= 2 ? kb_keyref_parse_der(der, n) : NULL;
    free(der);
    return uri;
}

unsigned char *kb_keyref_encode_der(const char *uri, size_t *outlen)
{
    size_t ul = strlen(uri);
    if (ul > 0xffff)
        return NULL;
    size_t ulen_bytes = ul < 0x80 ? 1 : ul < 0x100 ? 2 : 3;
    size_t inner = 3 + 1 + ulen_bytes + ul;
    size_t ilen_bytes = inner < 0x80 ? 1 : inner < 0x100 ? 2 : 3;
    size_t total = 1 + ilen_bytes + inner;
    unsigned char *d = malloc(total), *p = d;
    if (d == NULL)
        return NULL;
    *p++ = 0x30;
    if (ilen_bytes == 1) {
        *p++ = (unsigned char)inner;
    } else {
        *p++ = (unsigned char)(0x80 | (ilen_bytes - 1));
        if (ilen_bytes == 3)
            *p++ = (unsigned char)(inner >> 8);
        *p++ = (unsigned char)inner;
    }
    *p++ = 0x02;
    *p++ = 0x01;
    *p++ = 0x00;
    *p++ = 0x0c;
    if (ulen_bytes == 1) {
        *p++ = (unsigned char)ul;
    } else {
        *p++ = (unsigned char)(0x80 | (ulen_bytes - 1));
        if (ulen_bytes == 3)
            *p++ = (unsigned char)(ul >> 8);
        *p++ = (unsigned char)ul;
    }
    memcpy(p, uri, ul);
    *outlen = total;
    return d;
}
