/* Tests the key-reference parser (DER and PEM). Prints TAP. */
#include "keyref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_no, failures;

static void ok(int cond, const char *name)
{
    test_no++;
    printf("%sok %d - %s\n", cond ? "" : "not ", test_no, name);
    if (!cond)
        failures++;
}

static int parses_to(const unsigned char *der, size_t len, const char *want)
{
    char *uri = kb_keyref_parse_der(der, len);
    int r = want == NULL ? uri == NULL : uri != NULL && strcmp(uri, want) == 0;
    free(uri);
    return r;
}

int main(void)
{
    /* SEQUENCE { INTEGER 0, UTF8String "kms:local/web" } */
    static const unsigned char good[] = {
        0x30, 0x12, 0x02, 0x01, 0x00, 0x0c, 0x0d, 'k', 'm', 's',
        ':',  'l',  'o',  'c',  'a',  'l',  '/',  'w', 'e', 'b'};
    ok(parses_to(good, sizeof(good), "kms:local/web"), "DER key reference");

    unsigned char bad[sizeof(good)];
    memcpy(bad, good, sizeof(good));
    bad[4] = 0x01;
    ok(parses_to(bad, sizeof(bad), NULL), "version 1 is refused");

    memcpy(bad, good, sizeof(good));
    bad[5] = 0x13; /* PrintableString */
    ok(parses_to(bad, sizeof(bad), NULL), "a non-UTF8String uri is refused");

    ok(parses_to(good, sizeof(good) - 1, NULL), "truncated DER is refused");

    unsigned char longer[sizeof(good) + 1];
    memcpy(longer, good, sizeof(good));
    longer[sizeof(good)] = 0;
    ok(parses_to(longer, sizeof(longer), NULL), "trailing bytes are refused");

    static const unsigned char notkms[] = {
        0x30, 0x0b, 0x02, 0x01, 0x00, 0x0c, 0x06, 'f', 'i', 'l', 'e', ':', 'x'};
    ok(parses_to(notkms, sizeof(notkms), NULL), "a non-kms URI is refused");

    /* round trip through the encoder, with a long URI (long-form lengths) */
    char longuri[300];
    memcpy(longuri, "kms:aws/", 8);
    memset(longuri + 8, 'a', sizeof(longuri) - 9);
    longuri[sizeof(longuri) - 1] = '\0';
    size_t n;
    unsigned char *der = kb_keyref_encode_der(longuri, &n);
    ok(der != NULL && parses_to(der, n, longuri),
       "encode/parse round trip with long-form lengths");
    free(der);

    const char *pem =
        "kmsbridge key reference: kms:local/web\n"
        "The private key stays in the key manager; this file only names it.\n"
        "-----BEGIN KMSBRIDGE KEY URI-----\n"
        "MBICAQAMDWttczpsb2NhbC93ZWI=\n"
        "-----END KMSBRIDGE KEY URI-----\n";
    char *uri = kb_keyref_parse_pem(pem, strlen(pem));
    ok(uri != NULL && strcmp(uri, "kms:local/web") == 0,
       "PEM with leading text");
    free(uri);

    const char *other =
        "-----BEGIN PRIVATE KEY-----\nMBICAQAMDWttczpsb2NhbC93ZWI="
        "\n-----END PRIVATE KEY-----\n";
    uri = kb_keyref_parse_pem(other, strlen(other));
    ok(uri == NULL, "another PEM label is ignored");
    free(uri);

    ok(kb_uri_valid("kms:hsm/id=01") && kb_uri_valid("kms:aws/alias/prod") &&
           !kb_uri_valid("kms:local") && !kb_uri_valid("kms:/x") &&
           !kb_uri_valid("kms:local/"),
       "URI syntax check");

    printf("1..%d\n", test_no);
    return failures != 0 ? 1 : 0;
}
