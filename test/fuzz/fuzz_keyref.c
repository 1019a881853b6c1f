/*
 * libFuzzer target: the key-reference parser (src-native/common/keyref.c).
 *
 * The first input byte chooses the form: even parses the rest as DER, odd as
 * PEM text. Whatever parses must be a valid kms: URI, and re-encoding it must
 * give DER that parses back to the same URI; for the DER form, that DER must
 * be the input itself (DER has one encoding).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int der = (data[0] & 1) == 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;

    /* copies, so ASan sees exactly n bytes and nothing NUL-terminated */
    uint8_t *copy = malloc(n != 0 ? n : 1);
    check(copy != NULL);
    memcpy(copy, p, n);
    char *uri = der ? kb_keyref_parse_der(copy, n)
                    : kb_keyref_parse_pem((const char *)copy, n);
    if (uri != NULL) {
        check(kb_uri_valid(uri));
        size_t dl = 0;
        unsigned char *enc = kb_keyref_encode_der(uri, &dl);
        check(enc != NULL);
        if (der)
            check(dl == n && memcmp(enc, copy, n) == 0);
        char *back = kb_keyref_parse_der(enc, dl);
        check(back != NULL && strcmp(back, uri) == 0);
        free(back);
        free(enc);
        free(uri);
    }
    free(copy);
    return 0;
}
