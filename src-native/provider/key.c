/*
 * Key objects. A key holds its kms: URI and a copy of its public half; no
 * handle, session or connection. Every private operation sends the URI, so a
 * key loaded before fork() keeps working in the child (nginx workers).
 */
#include "errors.h"
#include "log.h"
#include "names.h"
#include "provider.h"

#include <openssl/asn1.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KB_KEY_MAGIC 0x6b6d736bu /* "kmsk" */
#define DESCRIBE_TTL_MS 5000
#define DESCRIBE_SLOTS 8

struct kb_key *kb_key_new(struct kb_prov *prov, enum kb_key_type type)
{
    struct kb_key *key = calloc(1, sizeof(*key));
    if (key == NULL)
        return NULL;
    key->magic = KB_KEY_MAGIC;
    key->prov = prov;
    key->refs = 1;
    key->type = type;
    return key;
}

struct kb_key *kb_key_up_ref(struct kb_key *key)
{
    if (key != NULL)
        __atomic_add_fetch(&key->refs, 1, __ATOMIC_RELAXED);
    return key;
}

void kb_key_free(struct kb_key *key)
{
    if (key == NULL || __atomic_sub_fetch(&key->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    EVP_PKEY_free(key->pub);
    free(key->uri);
    free(key->curve);
    free(key->algorithms);
    free(key->digests);
    free(key->mandatory_digest);
    key->magic = 0;
    free(key);
}

struct kb_key *kb_key_from_reference(const void *ref, size_t ref_sz)
{
    struct kb_key *key;

    if (ref == NULL || ref_sz != sizeof(key))
        return NULL;
    memcpy(&key, ref, sizeof(key));
    if (key == NULL || key->magic != KB_KEY_MAGIC)
        return NULL;
    return key;
}

const char *kb_key_type_name(enum kb_key_type type)
{
    switch (type) {
    case KB_KEY_RSA:
        return "RSA";
    case KB_KEY_EC:
        return "EC";
    case KB_KEY_ED25519:
        return "ED25519";
    }
    return "?";
}

const char *kb_md_wire_name(const EVP_MD *md)
{
    static const struct {
        const char *ossl;
        const char *wire;
    } names[] = {
        {"SHA1", "sha1"},       {"SHA2-224", "sha224"}, {"SHA2-256", "sha256"},
        {"SHA2-384", "sha384"}, {"SHA2-512", "sha512"},
    };
    if (md == NULL)
        return NULL;
    /*
     * The NID first: EVP_MD_is_a looks each name up in the library's name
     * map under a lock, which cost more than a sixth of the provider's own
     * work per signature (callgrind, docs/bench/latest.md).
     */
    const char *wire = kb_md_nid_wire_name(EVP_MD_get_type(md));
    if (wire != NULL)
        return wire;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (EVP_MD_is_a(md, names[i].ossl))
            return names[i].wire;
    return NULL;
}

int kb_key_check_use(const struct kb_key *key, const char *alg,
                     const char *digest)
{
    if (key->uri == NULL) {
        kb_raise(key->prov, KB_R_NO_PRIVATE_KEY,
                 "this %s key is a public key, not a key in a key manager",
                 kb_key_type_name(key->type));
        return 0;
    }
    if (key->algorithms != NULL && !kb_list_has(key->algorithms, alg)) {
        kb_raise(key->prov, KB_R_UNSUPPORTED,
                 "key %s does not allow %s (it allows: %s)", key->uri, alg,
                 key->algorithms);
        return 0;
    }
    if (digest != NULL && key->mandatory_digest != NULL &&
        strcmp(digest, key->mandatory_digest) != 0) {
        kb_raise(key->prov, KB_R_UNSUPPORTED,
                 "key %s only signs %s digests, not %s", key->uri,
                 key->mandatory_digest, digest);
        return 0;
    }
    return 1;
}

/* The parameters of an RSAPublicKey (SEQUENCE { n, e }), for fromdata. */
static int rsa_params(OSSL_PARAM_BLD *bld, const ASN1_BIT_STRING *bits,
                      BIGNUM **n, BIGNUM **e)
{
    const unsigned char *p = bits->data, *end = bits->data + bits->length;
    long len;
    int tag, xclass;
    if (ASN1_get_object(&p, &len, &tag, &xclass, end - p) !=
            V_ASN1_CONSTRUCTED ||
        tag != V_ASN1_SEQUENCE || p + len != end)
        return 0;
    ASN1_INTEGER *ni = d2i_ASN1_INTEGER(NULL, &p, end - p);
    ASN1_INTEGER *ei = ni != NULL ? d2i_ASN1_INTEGER(NULL, &p, end - p) : NULL;
    int ok = ei != NULL && p == end &&
             (*n = ASN1_INTEGER_to_BN(ni, NULL)) != NULL &&
             (*e = ASN1_INTEGER_to_BN(ei, NULL)) != NULL &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, *n) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, *e);
    ASN1_INTEGER_free(ni);
    ASN1_INTEGER_free(ei);
    return ok;
}

/*
 * The public key from its SubjectPublicKeyInfo, built with EVP_PKEY_fromdata.
 * d2i_PUBKEY_ex in OpenSSL 3.0 sets up a decoder context over every
 * provider's decoders for each key: 5.4M instructions, a third of an
 * `openssl pkeyutl` command through this provider (callgrind). NULL for
 * anything but the three shapes the KeyService sends; the caller then
 * decodes the general way.
 */
static EVP_PKEY *public_from_spki(const struct kb_key *key,
                                  const unsigned char *spki, size_t len)
{
    const unsigned char *p = spki, *end = spki + len;
    long seq;
    int tag, xclass;
    if (ASN1_get_object(&p, &seq, &tag, &xclass, (long)len) !=
            V_ASN1_CONSTRUCTED ||
        tag != V_ASN1_SEQUENCE || p + seq != end)
        return NULL;
    X509_ALGOR *alg = d2i_X509_ALGOR(NULL, &p, end - p);
    ASN1_BIT_STRING *bits =
        alg != NULL ? d2i_ASN1_BIT_STRING(NULL, &p, end - p) : NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pk = NULL;
    BIGNUM *n = NULL, *e = NULL;
    const ASN1_OBJECT *oid = NULL;
    int ptype = V_ASN1_UNDEF;
    const void *pval = NULL;
    const char *name = NULL;
    int ok = 0;
    if (bits == NULL || p != end || bld == NULL || (bits->flags & 7) != 0)
        goto done; /* a public key is whole bytes */
    X509_ALGOR_get0(&oid, &ptype, &pval, alg);
    switch (key->type) {
    case KB_KEY_EC: {
        int curve = ptype == V_ASN1_OBJECT ? OBJ_obj2nid(pval) : NID_undef;
        const char *group = curve != NID_undef ? OBJ_nid2sn(curve) : NULL;
        name = "EC";
        ok = OBJ_obj2nid(oid) == NID_X9_62_id_ecPublicKey && group != NULL &&
             OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
                                             group, 0) &&
             OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY,
                                              bits->data, (size_t)bits->length);
        break;
    }
    case KB_KEY_RSA:
        name = "RSA";
        ok = OBJ_obj2nid(oid) == NID_rsaEncryption &&
             rsa_params(bld, bits, &n, &e);
        break;
    case KB_KEY_ED25519:
        name = "ED25519";
        ok = OBJ_obj2nid(oid) == NID_ED25519 && ptype == V_ASN1_UNDEF &&
             OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY,
                                              bits->data, (size_t)bits->length);
        break;
    }
    if (ok && (params = OSSL_PARAM_BLD_to_param(bld)) != NULL &&
        (ctx = EVP_PKEY_CTX_new_from_name(key->prov->libctx, name,
                                          KB_PROPQ_OTHERS)) != NULL &&
        EVP_PKEY_fromdata_init(ctx) > 0 &&
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pk = NULL;
done:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    ASN1_BIT_STRING_free(bits);
    X509_ALGOR_free(alg);
    return pk;
}

int kb_key_set_public(struct kb_key *key, const unsigned char *spki, size_t len)
{
    EVP_PKEY *pk = public_from_spki(key, spki, len);
    if (pk == NULL) {
        const unsigned char *p = spki;
        pk = d2i_PUBKEY_ex(NULL, &p, (long)len, key->prov->libctx,
                           KB_PROPQ_OTHERS);
        if (pk == NULL || p != spki + len) {
            EVP_PKEY_free(pk);
            return 0;
        }
    }
    EVP_PKEY_free(key->pub);
    key->pub = pk;
    if (key->bits == 0)
        key->bits = (unsigned)EVP_PKEY_get_bits(pk);
    return 1;
}

struct kb_key *kb_key_from_reply(struct kb_prov *prov,
                                 const struct kb_wire_msg *reply)
{
    char *uri = kb_wire_get_str(reply, KB_TAG_URI);
    char *type = kb_wire_get_str(reply, KB_TAG_KEY_TYPE);
    const struct kb_wire_field *spki = kb_wire_find(reply, KB_TAG_PUBLIC_KEY);
    struct kb_key *key = NULL;
    enum kb_key_type kt;

    if (uri == NULL || type == NULL || spki == NULL) {
        kb_raise(prov, KB_R_PROTOCOL,
                 "the agent's key description lacks URI, KEY_TYPE or "
                 "PUBLIC_KEY");
        goto done;
    }
    if (strcmp(type, "rsa") == 0) {
        kt = KB_KEY_RSA;
    } else if (strcmp(type, "ec") == 0) {
        kt = KB_KEY_EC;
    } else if (strcmp(type, "ed25519") == 0) {
        kt = KB_KEY_ED25519;
    } else {
        kb_raise(prov, KB_R_UNSUPPORTED,
                 "key %s has type %s, which this "
                 "provider does not handle",
                 uri, type);
        goto done;
    }
    key = kb_key_new(prov, kt);
    if (key == NULL) {
        kb_raise(prov, KB_R_NOMEM, "out of memory");
        goto done;
    }
    key->uri = uri;
    uri = NULL;
    uint32_t v;
    if (kb_wire_get_u32(reply, KB_TAG_BITS, &v))
        key->bits = v;
    if (kb_wire_get_u32(reply, KB_TAG_MAX_MESSAGE, &v))
        key->max_message = v;
    key->curve = kb_wire_get_str(reply, KB_TAG_CURVE);
    key->algorithms = kb_wire_get_str(reply, KB_TAG_ALGORITHMS);
    key->digests = kb_wire_get_str(reply, KB_TAG_DIGESTS);
    key->mandatory_digest = kb_wire_get_str(reply, KB_TAG_MANDATORY_DIGEST);
    char *salt = kb_wire_get_str(reply, KB_TAG_PSS_SALT);
    key->pss_salt_digest = salt != NULL && strcmp(salt, "digest") == 0;
    free(salt);
    if (!kb_key_set_public(key, spki->val, spki->len)) {
        kb_raise(prov, KB_R_PROTOCOL,
                 "the public key of %s does not parse as SubjectPublicKeyInfo",
                 key->uri);
        kb_key_free(key);
        key = NULL;
        goto done;
    }
    if (!EVP_PKEY_is_a(key->pub, kb_key_type_name(kt))) {
        kb_raise(prov, KB_R_PROTOCOL, "the public key of %s is not of type %s",
                 key->uri, kb_key_type_name(kt));
        kb_key_free(key);
        key = NULL;
    }
done:
    free(uri);
    free(type);
    return key;
}

/*
 * A short-lived cache of DESCRIBE replies: the decoder tries one decoder per
 * key type, and each would otherwise ask the agent again for the same URI.
 */
struct describe_slot {
    const struct kb_prov *prov;
    char *uri;
    struct kb_wire_msg *reply;
    long long at;
    pid_t pid;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct describe_slot cache[DESCRIBE_SLOTS];
static unsigned cache_next;

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct kb_key *cache_lookup(struct kb_prov *prov, const char *uri)
{
    struct kb_key *key = NULL;
    long long now = mono_ms();
    pid_t pid = getpid();

    pthread_mutex_lock(&cache_lock);
    for (unsigned i = 0; i < DESCRIBE_SLOTS; i++) {
        struct describe_slot *s = &cache[i];
        if (s->uri != NULL && s->prov == prov && s->pid == pid &&
            now - s->at < DESCRIBE_TTL_MS && strcmp(s->uri, uri) == 0) {
            key = kb_key_from_reply(prov, s->reply);
            break;
        }
    }
    pthread_mutex_unlock(&cache_lock);
    return key;
}

static void cache_store(const struct kb_prov *prov, const char *uri,
                        struct kb_wire_msg *reply)
{
    char *u = strdup(uri);
    if (u == NULL) {
        kb_wire_msg_free(reply);
        return;
    }
    pthread_mutex_lock(&cache_lock);
    struct describe_slot *s = &cache[cache_next++ % DESCRIBE_SLOTS];
    free(s->uri);
    kb_wire_msg_free(s->reply);
    s->prov = prov;
    s->uri = u;
    s->reply = reply;
    s->at = mono_ms();
    s->pid = getpid();
    pthread_mutex_unlock(&cache_lock);
}

void kb_key_cache_forget(const struct kb_prov *prov)
{
    pthread_mutex_lock(&cache_lock);
    for (unsigned i = 0; i < DESCRIBE_SLOTS; i++) {
        struct describe_slot *s = &cache[i];
        if (s->uri != NULL && s->prov == prov) {
            free(s->uri);
            kb_wire_msg_free(s->reply);
            memset(s, 0, sizeof(*s));
        }
    }
    pthread_mutex_unlock(&cache_lock);
}

struct kb_key *kb_key_load(struct kb_prov *prov, const char *uri)
{
    struct kb_key *key = cache_lookup(prov, uri);
    if (key != NULL)
        return key;

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_DESCRIBE, 0);
    kb_frame_str(&req, KB_TAG_URI, uri);
    int ok = kb_prov_call(prov, &req, uri, &reply);
    kb_buf_free(&req);
    if (!ok)
        return NULL;
    key = kb_key_from_reply(prov, reply);
    if (key != NULL) {
        KB_LOG("loaded %s: %s %u bits%s%s, allows %s", key->uri,
               kb_key_type_name(key->type), key->bits, key->curve ? " " : "",
               key->curve ? key->curve : "",
               key->algorithms ? key->algorithms : "?");
        cache_store(prov, uri, reply);
    } else {
        kb_wire_msg_free(reply);
    }
    return key;
}
