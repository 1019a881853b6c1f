/*
 * libFuzzer target: key URI validation (kb_uri_valid in keyref.c), the
 * check the provider's store and decoder apply before any request leaves
 * the process.
 *
 * The input is taken as a C string up to its first NUL. The verdict must
 * agree with an independent statement of the rule written here from
 * docs/wire-format.md and DESIGN.md: "kms:", a non-empty keyring, "/", a
 * non-empty key-id, no control character, at most 4096 bytes. A valid URI
 * must also survive the key-reference DER round trip.
 */
#include "keyref.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

static int expected(const char *s, size_t n)
{
    if (n > 4096 || n < 4 || memcmp(s, "kms:", 4) != 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    const char *slash = memchr(s + 4, '/', n - 4);
    if (slash == NULL || slash == s + 4 || slash == s + n - 1)
        return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    check(s != NULL);
    memcpy(s, data, size);
    s[size] = '\0';
    size_t n = strlen(s);

    int ok = kb_uri_valid(s);
    check(ok == expected(s, n));
    check(kb_uri_valid(NULL) == 0);
    if (ok) {
        size_t dl = 0;
        unsigned char *der = kb_keyref_encode_der(s, &dl);
        check(der != NULL);
        char *back = kb_keyref_parse_der(der, dl);
        check(back != NULL && strcmp(back, s) == 0);
        free(back);
        free(der);
    }
    free(s);
    return 0;
}
