/*
 * config_check.h -- the checks of the configuration that need modules above
 * config/ (server.tls, sessions.redis), and `infergate -t`.
 */
#ifndef INFERGATE_CONFIG_CHECK_H
#define INFERGATE_CONFIG_CHECK_H

#include <stdio.h>

/* Hands tls.c's and session_redis.c's checks to the loader (config.h,
 * struct config_hooks). Call once before the first config_load(). */
void config_check_init(void);

/* `infergate -t`: loads the configuration in `dir` and prints
 * "configuration ok" (returns 0) or every problem, one a line (returns 1). */
int config_check_main(const char *dir, FILE *out);

#endif
