#include "names.h"

#include <openssl/obj_mac.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    int nid;
    size_t len;
    const char *wire;
} digests[] = {
    {NID_sha1, 20, "sha1"},     {NID_sha224, 28, "sha224"},
    {NID_sha256, 32, "sha256"}, {NID_sha384, 48, "sha384"},
    {NID_sha512, 64, "sha512"},
};

const char *kb_md_nid_wire_name(int nid)
{
    for (size_t i = 0; i < sizeof(digests) / sizeof(digests[0]); i++)
        if (digests[i].nid == nid)
            return digests[i].wire;
    return NULL;
}

const char *kb_md_wire_name_for_len(size_t len)
{
    for (size_t i = 0; i < sizeof(digests) / sizeof(digests[0]); i++)
        if (digests[i].len == len)
            return digests[i].wire;
    return NULL;
}

size_t kb_md_wire_size(const char *wire)
{
    for (size_t i = 0; wire != NULL && i < sizeof(digests) / sizeof(digests[0]);
         i++)
        if (strcmp(digests[i].wire, wire) == 0)
            return digests[i].len;
    return 0;
}

int kb_list_has(const char *list, const char *word)
{
    size_t n = strlen(word);

    for (const char *p = list; p != NULL && *p != '\0';) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = strchr(p, ',');
        const char *t = e != NULL ? e : p + strlen(p);
        while (t > p && t[-1] == ' ')
            t--;
        if ((size_t)(t - p) == n && strncmp(p, word, n) == 0)
            return 1;
        p = e;
    }
    return 0;
}

unsigned kb_parse_ms(const char *v)
{
    if (v == NULL || v[0] == '\0')
        return 0;
    char *end;
    unsigned long t = strtoul(v, &end, 10);
    if (*end != '\0' || t == 0 || t > 3600000UL)
        return 0;
    return (unsigned)t;
}
