/*
 * The engine's errors: its own error library, with the provider's reason
 * codes and strings, so a failure reads the same through either interface
 * ("kmsbridge: ... key not found ... kms:local/nope").
 */
#include "engine.h"

#include <openssl/err.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "../provider/errors.h"

#define MAX_REASONS 48

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int lib_code;
static int loaded;
/* ERR_load_strings keeps pointers into this table: it must outlive them. */
static ERR_STRING_DATA strings[MAX_REASONS + 2];

void kb_eng_errors_load(void)
{
    pthread_mutex_lock(&lock);
    if (lib_code == 0)
        lib_code = ERR_get_next_error_library();
    if (!loaded && lib_code != 0) {
        size_t n = 0;
        /*
         * Packed with the library code already: an entry whose code is 0
         * would end the table, and the library's name is reason 0.
         */
        strings[n].error = ERR_PACK(lib_code, 0, 0);
        strings[n++].string = "kmsbridge engine";
        for (const OSSL_ITEM *r = kb_reason_strings();
             r->ptr != NULL && n < MAX_REASONS + 1; r++) {
            strings[n].error = ERR_PACK(lib_code, 0, r->id);
            strings[n++].string = r->ptr;
        }
        strings[n].error = 0;
        strings[n].string = NULL;
        ERR_load_strings(lib_code, strings);
        loaded = 1;
    }
    pthread_mutex_unlock(&lock);
}

void kb_eng_errors_unload(void)
{
    pthread_mutex_lock(&lock);
    if (loaded) {
        ERR_unload_strings(lib_code, strings);
        loaded = 0;
    }
    pthread_mutex_unlock(&lock);
}

void kb_eng_raise_at(const char *file, int line, const char *func, int reason,
                     const char *fmt, ...)
{
    char msg[600];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /*
     * Through the provider's raiser with no provider: it only records the
     * message for the Node addon's lastError() and writes the debug log.
     */
    kb_raise_at(NULL, file, line, func, reason, "%s", msg);
    ERR_new();
    ERR_set_debug(file, line, func);
    ERR_set_error(lib_code != 0 ? lib_code : ERR_LIB_USER, reason,
                  "kmsbridge: %s", msg);
}
