/*
 * The key-reference PEM of docs/wire-format.md: a PEM block labelled
 * "KMSBRIDGE KEY URI" holding DER SEQUENCE { INTEGER 0, UTF8String uri }.
 */
#ifndef KMSBRIDGE_KEYREF_H
#define KMSBRIDGE_KEYREF_H

#include <stddef.h>

#define KB_KEYREF_PEM_LABEL "KMSBRIDGE KEY URI"
#define KB_KEYREF_STRUCTURE "kmsbridge-keyref"

/*
 * Parses the DER form. Returns a malloc'ed URI (which starts with "kms:"),
 * or NULL if |der| is not exactly a version-0 key reference.
 */
char *kb_keyref_parse_der(const unsigned char *der, size_t len);

/*
 * Finds the first "KMSBRIDGE KEY URI" block in PEM text (text before it is
 * skipped) and parses it. Returns a malloc'ed URI or NULL.
 */
char *kb_keyref_parse_pem(const char *text, size_t len);

/* Encodes the DER form; returns a malloc'ed buffer and its size, or NULL. */
unsigned char *kb_keyref_encode_der(const char *uri, size_t *outlen);

/* 1 if |uri| is a syntactically valid kms:<keyring>/<key-id> URI. */
int kb_uri_valid(const char *uri);

#endif
