/*
 * The wire vocabulary shared by the provider and the ENGINE: digest names
 * ("sha256") as the KeyService spells them, the comma-separated lists of a
 * DESCRIBE reply, and the millisecond settings both read from their configs.
 */
#ifndef KMSBRIDGE_NAMES_H
#define KMSBRIDGE_NAMES_H

#include <stddef.h>

/* Wire digest name of a digest NID (NID_sha256 ...), or NULL if unsupported. */
const char *kb_md_nid_wire_name(int nid);
/* Wire digest name of a digest of |len| bytes (signing a bare digest), or NULL.
 */
const char *kb_md_wire_name_for_len(size_t len);
/* Size in bytes of the digest a wire name names, or 0. */
size_t kb_md_wire_size(const char *wire);
/* 1 if the comma-separated |list| (may be NULL) contains |word|. */
int kb_list_has(const char *list, const char *word);
/* A timeout setting in milliseconds (1 .. 3600000), or 0 if absent or invalid.
 */
unsigned kb_parse_ms(const char *v);

#endif
