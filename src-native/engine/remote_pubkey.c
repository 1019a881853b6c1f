/*
 * REMOTE_PUBKEY mode: verify and encrypt with our keys sent to the key
 * manager (VERIFY, ENCRYPT), so its audit log sees every use of the key.
 * The RSA, EC and Ed25519 methods call these only in that mode; otherwise
 * the public key in the EVP_PKEY does the work locally.
 */
#include "engine.h"

#include <openssl/err.h>
#include <string.h>

#include "../provider/errors.h"
#include "log.h"

int kb_eng_remote_verify(const struct kb_ekey *k,
                         const struct kb_eng_sig_params *p,
                         const unsigned char *tbs, size_t tbslen,
                         const unsigned char *sig, size_t siglen)
{
    if (!kb_ekey_check_use(k, p->alg, p->digest))
        return -1;

    struct kb_buf req = {0};
    struct kb_wire_msg *reply = NULL;
    kb_frame_begin(&req, 0, KB_MSG_VERIFY, 0);
    kb_frame_str(&req, KB_TAG_URI, k->uri);
    kb_frame_str(&req, KB_TAG_ALGORITHM, p->alg);
    kb_frame_str(&req, KB_TAG_DIGEST, p->digest);
    if (p->mgf1 != NULL && p->digest != NULL && strcmp(p->mgf1, p->digest) != 0)
        kb_frame_str(&req, KB_TAG_MGF1_DIGEST, p->mgf1);
    if (p->salt >= 0)
        kb_frame_u32(&req, KB_TAG_SALT_LENGTH, (uint32_t)p->salt);
    kb_frame_bytes(&req, KB_TAG_DATA, tbs, tbslen);
    kb_frame_bytes(&req, KB_TAG_SIGNATURE, sig, siglen);
    KB_LOG("engine verify %s %s digest=%s salt=%d, %zu bytes", k->uri, p->alg,
           p->digest ? p->digest : "-", p->salt, tbslen);

    /*
     * A signature that does not verify is an answer, not a failure: verify
     * returns 0 and leaves the error queue as it found it.
     */
    ERR_set_mark();
    int ok = kb_eng_call(&req, k->uri, &reply);
    kb_buf_free(&req);
    if (ok) {
        ERR_clear_last_mark();
        kb_wire_msg_free(reply);
        return 1;
    }
    if (ERR_GET_REASON(ERR_peek_last_error()) == KB_R_BAD_SIGNATURE) {
        ERR_pop_to_mark();
        return 0;
    }
    ERR_clear_last_mark();
    return -1;
}
