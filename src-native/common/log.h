/*
 * Debug log: KMSBRIDGE_DEBUG=1 writes to stderr, KMSBRIDGE_DEBUG=/path appends
 * to that file. Callers log names, URIs, sizes and outcomes, never key
 * material or data buffers: only their lengths.
 */
#ifndef KMSBRIDGE_LOG_H
#define KMSBRIDGE_LOG_H

int kb_log_enabled(void);
void kb_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define KB_LOG(...)                                                            \
    do {                                                                       \
        if (kb_log_enabled())                                                  \
            kb_log(__VA_ARGS__);                                               \
    } while (0)

#endif
