/*
 * config_check.c -- the checks of the configuration that config/ cannot
 * make alone, and `infergate -t`.
 *
 * The loader (config.c) knows every key, but two sections are understood by
 * modules above it: server.tls (tls.c builds the context and reads the
 * certificate, key and client CA) and sessions.redis (session_redis.c parses
 * the URL and options with the code it uses at run time). They are handed to
 * the loader here as hooks, so config/ never calls up into io/ or app/.
 */
#include "config_check.h"
#include "config.h"
#include "session.h"
#include "tls.h"

#include <stdint.h>
#include <time.h>

void config_check_init(void)
{
    static const struct config_hooks h = {
        .redis_url_problem = session_redis_url_problem,
        .redis_problem = session_redis_conf_problem,
        .tls_new = tls_ctx_new,
        .tls_free = tls_ctx_free,
    };

    config_hooks_set(&h);
}

int config_check_main(const char *dir, FILE *out)
{
    struct cfg_errors errs = {NULL, 0};
    struct config *c;
    size_t i;

    config_check_init();
    c = config_load(dir, &errs);
    if (c != NULL) {
        const struct tls_cert_info *ci = tls_ctx_cert(c->server.tls_ctx);
        int64_t now = (int64_t)time(NULL);
        if (ci && ci->not_after - now < CFG_TLS_EXPIRY_WARN_S) {
            char when[32];
            tls_time_str(ci->not_after, when, sizeof(when));
            fprintf(out, "warning: %s: the certificate expires on %s (in %lld days)\n",
                    c->server.tls.cert, when, (long long)((ci->not_after - now) / 86400));
        }
        for (i = 0; i < c->nhosts; i++)
            if (!c->hosts[i].tls.verify)
                fprintf(out, "warning: host %s: tls.verify is false: its certificate is"
                        " not checked\n", c->hosts[i].name);
        fprintf(out, "configuration ok\n");
        config_unref(c);
        return 0;
    }
    for (i = 0; i < errs.n; i++)
        fprintf(out, "%s\n", errs.msg[i]);
    cfg_errors_free(&errs);
    return 1;
}
