/*
 * libFuzzer target: the C wire decoder (src-native/common/wire.c).
 *
 * Any input is handed to kb_wire_decode. A frame it accepts must dump, must
 * re-encode, and the re-encoding must decode again to the same dump and the
 * same bytes (a decoder that accepts what its own encoder cannot reproduce,
 * or vice versa, is a bug). The lookups the provider uses run on every
 * accepted frame too. A rejected frame must leave *out NULL and a reason.
 */
#include "wire.h"

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
    struct kb_wire_msg *m = NULL;
    char err[128] = "";

    /* the stream reader's first step: the length prefix */
    if (size >= 4) {
        size_t fs = kb_wire_frame_size(data);
        check(fs == 0 || (fs >= 4 + KB_WIRE_MIN_LENGTH &&
                          fs <= 4 + KB_WIRE_MAX_LENGTH));
    }
    if (!kb_wire_decode(data, size, &m, err, sizeof(err))) {
        check(m == NULL);
        check(err[0] != '\0');
        return 0;
    }
    check(m != NULL);

    char *dump = kb_wire_dump(m);
    check(dump != NULL);

    struct kb_buf b = {0};
    check(kb_wire_encode(m, &b));
    /* only unknown tags may be dropped... they are kept, so same length */
    check(b.len == size && memcmp(b.data, data, size) == 0);

    struct kb_wire_msg *m2 = NULL;
    check(kb_wire_decode(b.data, b.len, &m2, err, sizeof(err)));
    char *dump2 = kb_wire_dump(m2);
    check(dump2 != NULL && strcmp(dump, dump2) == 0);

    /* the accessors the provider and the channel use */
    uint32_t v;
    (void)kb_wire_get_u32(m, KB_TAG_VERSION, &v);
    (void)kb_wire_get_u32(m, KB_TAG_MAX_FRAME, &v);
    free(kb_wire_get_str(m, KB_TAG_MESSAGE));
    free(kb_wire_get_str(m, KB_TAG_URI));
    (void)kb_wire_status_name(m->status);
    for (size_t i = 0; i < m->nfields; i++) {
        const struct kb_wire_field *f = &m->fields[i];
        if (f->kind == KB_KIND_NESTED)
            for (size_t k = 0; k < f->nsub; k++)
                free(kb_wire_strdup(&f->sub[k]));
        else
            free(kb_wire_strdup(f));
    }

    free(dump);
    free(dump2);
    kb_wire_msg_free(m2);
    kb_wire_msg_free(m);
    kb_buf_free(&b);
    return 0;
}
