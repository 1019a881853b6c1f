#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_on;
static char log_path[1024]; /* empty: stderr */

static void log_init(void)
{
    const char *v = getenv("KMSBRIDGE_DEBUG");
    if (v == NULL || v[0] == '\0' || strcmp(v, "0") == 0)
        return;
    log_on = 1;
    if (v[0] == '/' && strlen(v) < sizeof(log_path))
        strcpy(log_path, v);
}

int kb_log_enabled(void)
{
    pthread_once(&log_once, log_init);
    return log_on;
}

void kb_log(const char *fmt, ...)
{
    if (!kb_log_enabled())
        return;

    char line[1024];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "kmsbridge[%ld] %02d:%02d:%02d.%03ld ",
                     (long)getpid(), tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)tv.tv_usec / 1000);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);

    pthread_mutex_lock(&log_lock);
    FILE *f = stderr;
    if (log_path[0] != '\0')
        f = fopen(log_path, "a");
    if (f != NULL) {
        fprintf(f, "%s\n", line);
        if (f != stderr)
            fclose(f);
        else
            fflush(f);
    }
    pthread_mutex_unlock(&log_lock);
}
