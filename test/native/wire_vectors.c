/*
 * Checks the C wire codec against the golden vectors shared with the
 * TypeScript codec (test/golden/wire-vectors.txt, format in
 * docs/wire-format.md). For each vector: a `dump` vector must decode to
 * exactly that dump and re-encode to the same bytes; an `error` vector must
 * be rejected. Prints TAP.
 *
 * usage: wire_vectors <vectors-file>
 */
#include "wire.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vector {
    char name[256];
    unsigned char *bytes;
    size_t len;
    char *dump;  /* expected dump, or NULL */
    char *error; /* expected rejection reason, or NULL */
    int line;
    int bad_hex;
};

static int test_no;
static int failures;

static void ok(int cond, const char *name)
{
    test_no++;
    printf("%sok %d - %s\n", cond ? "" : "not ", test_no, name);
    if (!cond)
        failures++;
}

static void vector_reset(struct vector *v)
{
    free(v->bytes);
    free(v->dump);
    free(v->error);
    memset(v, 0, sizeof(*v));
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static void append_hex(struct vector *v, const char *s)
{
    size_t n = strlen(s);
    unsigned char *b = realloc(v->bytes, v->len + n / 2 + 1);
    if (b == NULL)
        abort();
    v->bytes = b;
    int hi = -1;
    for (const char *c = s; *c != '\0'; c++) {
        if (isspace((unsigned char)*c))
            continue;
        int x = hexval((unsigned char)*c);
        if (x < 0) {
            v->bad_hex = 1;
            return;
        }
        if (hi < 0) {
            hi = x;
        } else {
            v->bytes[v->len++] = (unsigned char)(hi << 4 | x);
            hi = -1;
        }
    }
    if (hi >= 0)
        v->bad_hex = 1;
}

static void run_vector(const struct vector *v)
{
    char label[512];
    struct kb_wire_msg *m = NULL;
    char why[256] = "";

    if (v->bad_hex) {
        snprintf(label, sizeof(label), "%s: hex parses (line %d)", v->name,
                 v->line);
        ok(0, label);
        return;
    }
    int decoded = kb_wire_decode(v->bytes, v->len, &m, why, sizeof(why));
    if (v->error != NULL) {
        snprintf(label, sizeof(label), "%s: rejected (%s)", v->name, v->error);
        ok(!decoded, label);
        if (decoded) {
            char *d = kb_wire_dump(m);
            printf("  ---\n  decoded_as: '%s'\n  ...\n", d ? d : "?");
            free(d);
        }
        kb_wire_msg_free(m);
        return;
    }
    if (v->dump == NULL) {
        snprintf(label, sizeof(label), "%s: has a dump or error line", v->name);
        ok(0, label);
        kb_wire_msg_free(m);
        return;
    }
    snprintf(label, sizeof(label), "%s: decodes to its dump", v->name);
    if (!decoded) {
        ok(0, label);
        printf("  ---\n  error: '%s'\n  ...\n", why);
        return;
    }
    char *d = kb_wire_dump(m);
    int same = d != NULL && strcmp(d, v->dump) == 0;
    ok(same, label);
    if (!same)
        printf("  ---\n  found:  '%s'\n  wanted: '%s'\n  ...\n",
               d ? d : "(null)", v->dump);
    free(d);

    struct kb_buf b = {0};
    snprintf(label, sizeof(label), "%s: re-encodes to the same bytes", v->name);
    int enc = kb_wire_encode(m, &b);
    ok(enc && b.len == v->len && memcmp(b.data, v->bytes, v->len) == 0, label);
    kb_buf_free(&b);
    kb_wire_msg_free(m);
}

static char *trim_value(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s <wire-vectors.txt>\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (f == NULL) {
        printf("1..0 # SKIP cannot open %s\n", argv[1]);
        return 0;
    }

    struct vector v;
    memset(&v, 0, sizeof(v));
    int have = 0, lineno = 0, count = 0;
    char *line = NULL;
    size_t cap = 0;

    while (getline(&line, &cap, f) > 0) {
        lineno++;
        char *key = line;
        if (key[0] == '#' || key[0] == '\n' || key[0] == '\r' || key[0] == '\0')
            continue;
        char *sp = key;
        while (*sp != '\0' && *sp != ' ' && *sp != '\t' && *sp != '\n')
            sp++;
        char saved = *sp;
        *sp = '\0';
        char *val = saved != '\0' ? trim_value(sp + 1) : sp;
        if (strcmp(key, "name") == 0) {
            if (have) {
                run_vector(&v);
                count++;
            }
            vector_reset(&v);
            have = 1;
            v.line = lineno;
            snprintf(v.name, sizeof(v.name), "%s", val);
        } else if (!have) {
            continue;
        } else if (strcmp(key, "hex") == 0) {
            append_hex(&v, val);
        } else if (strcmp(key, "dump") == 0) {
            v.dump = strdup(val);
        } else if (strcmp(key, "error") == 0) {
            v.error = strdup(val);
        }
    }
    if (have) {
        run_vector(&v);
        count++;
    }
    vector_reset(&v);
    free(line);
    fclose(f);

    ok(count > 0, "the vector file holds vectors");
    printf("1..%d\n", test_no);
    return failures != 0 ? 1 : 0;
}
