/*
 * test_config.c -- the configuration module: doc.c (JSON/YAML with
 * positions) and config.c (the three files into a struct config).
 *
 * Each test writes its files into a fresh mkdtemp() directory under /tmp and
 * loads it; error lists are compared exactly, "FILE:LINE:COL: path: message"
 * with FILE = that directory + "/" + the file's name.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "config_check.h"
#include "doc.h"

/* ---- fixtures ---------------------------------------------------------- */

struct tdir {
    char path[64];
};

static int setup_dir(void **state)
{
    struct tdir *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return -1;
    snprintf(t->path, sizeof(t->path), "/tmp/infergate-cfg-XXXXXX");
    if (mkdtemp(t->path) == NULL) {
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown_dir(void **state)
{
    struct tdir *t = *state;

    nftw(t->path, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    free(t);
    return 0;
}

static const char *D(void **state)
{
    return ((struct tdir *)*state)->path;
}

static void put(void **state, const char *name, const char *text)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", D(state), name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static void del(void **state, const char *name)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", D(state), name);
    unlink(path);
}

/* Loads and expects success. */
static struct config *load_ok(void **state)
{
    struct cfg_errors e = {NULL, 0};
    struct config *c = config_load(D(state), &e);
    size_t i;

    for (i = 0; i < e.n; i++)
        print_message("unexpected: %s\n", e.msg[i]);
    assert_int_equal(e.n, 0);
    assert_non_null(c);
    cfg_errors_free(&e);
    return c;
}

/* Loads, expects failure with exactly these errors (each without the
 * "DIR/" prefix), NULL-terminated. */
static void load_fails(void **state, ...)
{
    struct cfg_errors e = {NULL, 0};
    struct config *c = config_load(D(state), &e);
    const char *want[64];
    size_t n = 0, i, len = strlen(D(state));
    int same;
    va_list ap;

    va_start(ap, state);
    while (n < 64 && (want[n] = va_arg(ap, const char *)) != NULL)
        n++;
    va_end(ap);

    same = c == NULL && e.n == n;
    for (i = 0; same && i < n; i++)
        same = strncmp(e.msg[i], D(state), len) == 0 && e.msg[i][len] == '/' &&
               strcmp(e.msg[i] + len + 1, want[i]) == 0;
    if (!same) {
        for (i = 0; i < n; i++)
            print_message("want: %s\n", want[i]);
        for (i = 0; i < e.n; i++)
            print_message("got:  %s\n", e.msg[i] + (strncmp(e.msg[i], D(state), len) ? 0 : len + 1));
    }
    cfg_errors_free(&e);
    config_unref(c);
    assert_true(same);
}

/* Loads, expects failure, returns all error text joined by newlines. */
static char *load_errors(void **state)
{
    struct cfg_errors e = {NULL, 0};
    struct config *c = config_load(D(state), &e);
    size_t i, len = 1;
    char *all;

    assert_null(c);
    assert_true(e.n > 0);
    for (i = 0; i < e.n; i++)
        len += strlen(e.msg[i]) + 1;
    all = calloc(1, len);
    assert_non_null(all);
    for (i = 0; i < e.n; i++) {
        strcat(all, e.msg[i]);
        strcat(all, "\n");
    }
    cfg_errors_free(&e);
    return all;
}

#define GAIA_HOSTS "{\"hosts\": [\"asia\", \"hyperliquid\"]}\n"

/* ---- Gaia's files, unchanged ------------------------------------------- */

static void test_gaia_files(void **state)
{
    struct config *c;

    put(state, "hosts.json",
        "{\n  \"hosts\": [\"asia\", \"hyperliquid\", \"ukraine\", \"llama3b\", \"scroll\", \"nillion\"]\n}\n");
    put(state, "api-keys.json",
        "{\n"
        "  \"apiKeys\": [\n"
        "    {\n"
        "      \"key\": \"gaia-abcdef123456\",\n"
        "      \"description\": \"API Key description\",\n"
        "      \"isActive\": true\n"
        "    }\n"
        "  ]\n"
        "}\n");
    c = load_ok(state);
    assert_int_equal(c->refcnt, 1);
    assert_string_equal(c->dir, D(state));
    assert_int_equal(c->nhosts, 6);
    assert_string_equal(c->hosts[0].name, "asia");
    assert_string_equal(c->hosts[0].url, "https://asia.gaia.domains");
    assert_string_equal(c->hosts[1].name, "hyperliquid");
    assert_string_equal(c->hosts[1].url, "https://hyperliquid.gaia.domains");
    assert_string_equal(c->hosts[5].url, "https://nillion.gaia.domains");
    assert_int_equal(c->hosts[0].weight, 1);
    assert_int_equal(c->hosts[0].priority, 0);
    assert_int_equal(c->hosts[0].models.n, 0);
    assert_int_equal(c->hosts[0].max_concurrent, 0);
    assert_null(c->hosts[0].keys);
    assert_null(c->hosts[0].region);
    assert_null(c->hosts[0].address);
    assert_int_equal(c->hosts[0].nlabels, 0);

    assert_int_equal(c->nkeys, 1);
    assert_string_equal(c->keys[0].secret, "gaia-abcdef123456");
    assert_string_equal(c->keys[0].description, "API Key description");
    assert_int_equal(c->keys[0].active, 1);
    assert_null(c->keys[0].pool);
    assert_int_equal(c->keys[0].hosts.n, 0);
    assert_int_equal(c->keys[0].weight, 1);
    assert_string_equal(c->keys[0].id, "c6c87d6ae3416206");       /* FNV-1a 64 */
    /* the first '-' is the 5th character: no prefix kept */
    assert_string_equal(c->keys[0].fingerprint, "\xe2\x80\xa6" "3456");
    assert_int_equal(config_key_usable(&c->keys[0], &c->hosts[0]), 1);
    config_unref(c);
}

static void test_gaia_hosts_only(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    c = load_ok(state);
    assert_int_equal(c->nhosts, 2);
    assert_int_equal(c->nkeys, 0);
    assert_null(c->keys);
    config_unref(c);
}

/* ---- hosts.json forms -------------------------------------------------- */

static void test_host_object_every_field(void **state)
{
    struct config *c;
    const struct cfg_host *h;

    put(state, "hosts.json",
        "{\"hosts\": [{\"name\": \"gpu-a\", \"url\": \"http://10.0.0.5:8080/\", \"weight\": 3,\n"
        " \"priority\": 2, \"models\": [\"llama-3.1-8b-instruct\", \"qwen-2.5-7b\"],\n"
        " \"containers\": [\"inference-1\"], \"max_concurrent\": 100, \"region\": \"eu-west\",\n"
        " \"address\": \"0x1234abcd\", \"keys\": \"pool-a\", \"labels\": {\"tier\": \"gpu\", \"dc\": \"fra\"}}]}\n");
    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"key\": \"sk-pool-a-0000001\", \"pool\": \"pool-a\", \"hosts\": [\"gpu-a\"],"
        " \"weight\": 7, \"description\": \"pool a\"}]}\n");
    c = load_ok(state);
    assert_int_equal(c->nhosts, 1);
    h = &c->hosts[0];
    assert_string_equal(h->name, "gpu-a");
    assert_string_equal(h->url, "http://10.0.0.5:8080");
    assert_int_equal(h->weight, 3);
    assert_int_equal(h->priority, 2);
    assert_int_equal(h->models.n, 2);
    assert_string_equal(h->models.v[0], "llama-3.1-8b-instruct");
    assert_string_equal(h->models.v[1], "qwen-2.5-7b");
    assert_int_equal(h->containers.n, 1);
    assert_string_equal(h->containers.v[0], "inference-1");
    assert_int_equal(h->max_concurrent, 100);
    assert_string_equal(h->region, "eu-west");
    assert_string_equal(h->address, "0x1234abcd");
    assert_string_equal(h->keys, "pool-a");
    assert_int_equal(h->nlabels, 2);
    assert_string_equal(h->labels[0].name, "tier");
    assert_string_equal(h->labels[0].value, "gpu");
    assert_string_equal(h->labels[1].name, "dc");
    assert_string_equal(h->labels[1].value, "fra");

    assert_int_equal(c->nkeys, 1);
    assert_string_equal(c->keys[0].pool, "pool-a");
    assert_int_equal(c->keys[0].weight, 7);
    assert_int_equal(c->keys[0].hosts.n, 1);
    assert_string_equal(c->keys[0].fingerprint, "sk-\xe2\x80\xa6" "0001");
    assert_int_equal(config_key_usable(&c->keys[0], h), 1);
    assert_int_equal(config_host_serves(h, "qwen-2.5-7b"), 1);
    assert_int_equal(config_host_serves(h, "mistral"), 0);
    config_unref(c);
}

static void test_host_urls_and_template(void **state)
{
    struct config *c;

    put(state, "policies.yaml", "routing:\n  hosts_template: \"http://{name}.internal:8080/\"\n");
    put(state, "hosts.json",
        "{\"hosts\": [\"asia\", \"https://llama.example.com/\", \"HTTP://user:pw@10.0.0.9:81/base//\",\n"
        "  {\"url\": \"https://[::1]:8443\"}, {\"name\": \"node-7\"}, {\"name\": \"x:9\", \"url\": \"http://y\"}]}\n");
    c = load_ok(state);
    assert_int_equal(c->nhosts, 6);
    assert_string_equal(c->hosts[0].name, "asia");
    assert_string_equal(c->hosts[0].url, "http://asia.internal:8080");
    assert_string_equal(c->hosts[1].name, "llama.example.com");
    assert_string_equal(c->hosts[1].url, "https://llama.example.com");
    assert_string_equal(c->hosts[2].name, "10.0.0.9:81");              /* no user info */
    assert_string_equal(c->hosts[2].url, "HTTP://user:pw@10.0.0.9:81/base");
    assert_string_equal(c->hosts[3].name, "[::1]:8443");
    assert_string_equal(c->hosts[3].url, "https://[::1]:8443");
    assert_string_equal(c->hosts[4].name, "node-7");
    assert_string_equal(c->hosts[4].url, "http://node-7.internal:8080");
    assert_string_equal(c->hosts[5].name, "x:9");
    assert_string_equal(c->hosts[5].url, "http://y");
    assert_non_null(config_host_by_name(c, "node-7"));
    assert_ptr_equal(config_host_by_name(c, "asia"), &c->hosts[0]);
    assert_null(config_host_by_name(c, "asi"));
    config_unref(c);
}

#define BARE_NAME_ERR "expected a host name like \"asia\", \"10.0.0.5:4000\" or \"[::1]:4000\"," \
    " or a URL like \"https://host:port\""

/* Bare host:port, ip:port and [v6]:port names go through hosts_template
 * like any bare name; the URL made must keep a valid host[:port]. */
static void test_host_bare_ports(void **state)
{
    struct config *c;

    put(state, "policies.yaml", "routing:\n  hosts_template: \"http://{name}\"\n");
    put(state, "hosts.json",
        "{\"hosts\": [\"10.0.0.5:4000\", \"gpu-b.lan:8080\", \"[fd00::5]:4000\", \"[::1]\", \"asia\",\n"
        "  {\"name\": \"10.0.0.6:4001\", \"weight\": 2}]}\n");
    c = load_ok(state);
    assert_int_equal(c->nhosts, 6);
    assert_string_equal(c->hosts[0].name, "10.0.0.5:4000");
    assert_string_equal(c->hosts[0].url, "http://10.0.0.5:4000");
    assert_string_equal(c->hosts[1].url, "http://gpu-b.lan:8080");
    assert_string_equal(c->hosts[2].name, "[fd00::5]:4000");
    assert_string_equal(c->hosts[2].url, "http://[fd00::5]:4000");
    assert_string_equal(c->hosts[3].url, "http://[::1]");
    assert_string_equal(c->hosts[4].url, "http://asia");
    assert_string_equal(c->hosts[5].url, "http://10.0.0.6:4001");
    config_unref(c);

    put(state, "hosts.json",
        "{\"hosts\": [\"a:0\", \"a:65536\", \"a:080\", \"a:b\", \"a:1:2\", \":80\", \"[::1\",\n"
        "  \"[zz::1]:80\", \"[::1]x\", \"a:65535\"]}\n");
    load_fails(state,
        "hosts.json:1:12: hosts[0]: " BARE_NAME_ERR,
        "hosts.json:1:19: hosts[1]: " BARE_NAME_ERR,
        "hosts.json:1:30: hosts[2]: " BARE_NAME_ERR,
        "hosts.json:1:39: hosts[3]: " BARE_NAME_ERR,
        "hosts.json:1:46: hosts[4]: " BARE_NAME_ERR,
        "hosts.json:1:55: hosts[5]: " BARE_NAME_ERR,
        "hosts.json:1:62: hosts[6]: " BARE_NAME_ERR,
        "hosts.json:2:3: hosts[7]: " BARE_NAME_ERR,
        "hosts.json:2:17: hosts[8]: " BARE_NAME_ERR,
        NULL);

    put(state, "policies.yaml", "");           /* the default https://{name}.gaia.domains */
    put(state, "hosts.json", "{\"hosts\": [\"10.0.0.5:4000\", {\"name\": \"x:9\"}, \"asia\"]}\n");
    load_fails(state,
        "hosts.json:1:12: hosts[0]: \"10.0.0.5:4000\" through routing.hosts_template gives"
        " \"https://10.0.0.5:4000.gaia.domains\", which has no valid host[:port]: write a URL,"
        " or set a template such as \"http://{name}\"",
        "hosts.json:1:29: hosts[1]: \"x:9\" through routing.hosts_template gives"
        " \"https://x:9.gaia.domains\", which has no valid host[:port]: write a URL,"
        " or set a template such as \"http://{name}\"",
        NULL);
}

static void test_host_errors(void **state)
{
    put(state, "hosts.json",
        "{\"hosts\": [\"asia!\", \"ftp://x\", \"https://\", 42, [\"a\"],\n"
        " {\"weight\": 0, \"priority\": 101, \"max_concurrent\": -1},\n"
        " {\"name\": \"a b\", \"url\": \"https://ok\", \"labels\": {\"t\": 1}, \"models\": [\"\", 3]},\n"
        " {\"name\": \"z\", \"url\": \"https://h/?q=1\", \"region\": \"\", \"wieght\": 2, \"models\": \"m\"}],\n"
        " \"extra\": 1}\n");
    load_fails(state,
        "hosts.json:1:12: hosts[0]: expected a host name like \"asia\", \"10.0.0.5:4000\" or \"[::1]:4000\", or a URL like \"https://host:port\"",
        "hosts.json:1:21: hosts[1]: expected an http:// or https:// URL",
        "hosts.json:1:32: hosts[2]: the URL has no host",
        "hosts.json:1:44: hosts[3]: expected a host name, a URL or an object",
        "hosts.json:1:48: hosts[4]: expected a host name, a URL or an object",
        "hosts.json:2:2: hosts[5].name: missing required key \"name\" (or \"url\")",
        "hosts.json:2:13: hosts[5].weight: must be between 1 and 1000",
        "hosts.json:2:28: hosts[5].priority: must be between 0 and 100",
        "hosts.json:2:51: hosts[5].max_concurrent: must be between 0 and 1000000",
        "hosts.json:3:11: hosts[6].name: a host name is letters, digits, '.', '_', '-' and ':', starting with a letter or digit",
        "hosts.json:3:55: hosts[6].labels.t: expected a string",
        "hosts.json:3:70: hosts[6].models[0]: must not be empty",
        "hosts.json:3:74: hosts[6].models[1]: expected a string",
        "hosts.json:4:23: hosts[7].url: a base URL must not have a query or a fragment",
        "hosts.json:4:51: hosts[7].region: must not be empty",
        "hosts.json:4:55: hosts[7].wieght: unknown key, did you mean \"weight\"?",
        "hosts.json:4:78: hosts[7].models: expected an array of strings",
        "hosts.json:5:2: extra: unknown key",
        NULL);
}

static void test_hosts_root_shapes(void **state)
{
    put(state, "hosts.json", "[\"asia\"]\n");
    load_fails(state, "hosts.json:1:1: $: expected an object with key \"hosts\"", NULL);

    put(state, "hosts.json", "\n  {\"host\": [\"asia\"]}\n");
    load_fails(state,
        "hosts.json:2:3: hosts: missing required key",
        "hosts.json:2:4: host: unknown key, did you mean \"hosts\"?",
        NULL);

    put(state, "hosts.json", "{\"hosts\": \"asia\"}");
    load_fails(state, "hosts.json:1:11: hosts: expected an array of host names, URLs or objects", NULL);

    /* an empty list of hosts is valid */
    put(state, "hosts.json", "{\"hosts\": []}");
    config_unref(load_ok(state));
}

static void test_missing_hosts_file(void **state)
{
    put(state, "api-keys.json", "{\"apiKeys\": []}");
    load_fails(state, "hosts.json: $: cannot read the file: No such file or directory", NULL);
}

/* ---- policies.yaml defaults -------------------------------------------- */

static void check_all_defaults(const struct config *c)
{
    assert_string_equal(c->server.listen, "127.0.0.1:8080");
    assert_int_equal(c->server.workers, 1);
    assert_int_equal(c->server.max_body_bytes, 4 * 1024 * 1024);
    assert_int_equal(c->server.max_header_bytes, 16 * 1024);
    assert_int_equal(c->server.client_timeout_ms, 60000);
    assert_int_equal(c->server.drain_timeout_ms, 30000);
    assert_null(c->server.log_file);
    assert_int_equal(c->server.log_level, LOGL_INFO);
    assert_int_equal(c->server.log_format, LOGF_TEXT);
    assert_null(c->server.access_log);
    assert_int_equal(c->server.access_log_format, LOGF_TEXT);

    assert_int_equal(c->routing.strategy, STRAT_ROUND_ROBIN);
    assert_string_equal(c->routing.hosts_template, "https://{name}.gaia.domains");
    assert_null(c->routing.prefer_region);
    assert_int_equal(c->routing.sticky, AFF_NONE);
    assert_null(c->routing.sticky_header);
    assert_int_equal(c->routing.hash_key, AFF_USER);
    assert_null(c->routing.hash_header);
    assert_int_equal(c->routing.when_full, WHEN_FULL_REJECT);
    assert_int_equal(c->routing.queue_timeout_ms, 5000);
    assert_int_equal(c->routing.latency_decay_ms, 10000);

    assert_int_equal(c->nmodels, 0);

    assert_int_equal(c->retry.max_attempts, 3);
    assert_int_equal(c->retry.backoff, BACKOFF_EXPONENTIAL);
    assert_int_equal(c->retry.backoff_initial_ms, 100);
    assert_int_equal(c->retry.backoff_max_ms, 5000);
    assert_int_equal(c->retry.jitter, JITTER_FULL);
    assert_int_equal(c->retry.on, RETRY_ON_NETWORK_ERROR | RETRY_ON_TIMEOUT | RETRY_ON_5XX);
    assert_int_equal(c->retry.non_codes, 2);
    assert_int_equal(c->retry.on_codes[0], 429);
    assert_int_equal(c->retry.on_codes[1], 404);
    assert_int_equal(c->retry.respect_retry_after, 1);
    assert_int_equal(c->retry.per_try_timeout_ms, 30000);
    assert_int_equal(c->retry.deadline_ms, 60000);
    assert_true(c->retry.budget_ratio > 0.199 && c->retry.budget_ratio < 0.201);
    assert_int_equal(c->retry.budget_window_ms, 10000);
    assert_int_equal(c->retry.budget_min_retries, 100);

    assert_int_equal(c->breaker.enabled, 1);
    assert_int_equal(c->breaker.failure_threshold, 5);
    assert_int_equal(c->breaker.window_size, 100);
    assert_int_equal(c->breaker.minimum_requests, 10);
    assert_true(c->breaker.error_rate == 0.5);
    assert_int_equal(c->breaker.slow_call_latency_ms, 0);
    assert_true(c->breaker.slow_call_rate == 0.5);
    assert_int_equal(c->breaker.timeout_ms, 0);
    assert_int_equal(c->breaker.reset_timeout_ms, 30000);
    assert_int_equal(c->breaker.half_open_requests, 1);
    assert_int_equal(c->breaker.recovery, RECOVERY_IMMEDIATE);
    assert_int_equal(c->breaker.recovery_duration_ms, 300000);
    assert_true(c->breaker.recovery_step > 0.099 && c->breaker.recovery_step < 0.101);

    assert_int_equal(c->fallback.nchains, 0);

    assert_int_equal(c->health.enabled, 1);
    assert_int_equal(c->health.interval_ms, 10000);
    assert_int_equal(c->health.timeout_ms, 2000);
    assert_string_equal(c->health.path, "/v1/models");
    assert_int_equal(c->health.healthy_threshold, 2);
    assert_int_equal(c->health.unhealthy_threshold, 3);
    assert_int_equal(c->health.discover_models, 0);
    assert_int_equal(c->health.passive, 1);

    assert_int_equal(c->sessions.store, STORE_MEMORY);
    assert_int_equal(c->sessions.ttl_ms, 30 * 60000);
    assert_int_equal(c->sessions.max_entries, 100000);
    assert_string_equal(c->sessions.redis_url, "redis://127.0.0.1:6379/0");
    assert_string_equal(c->sessions.redis_prefix, "infergate:");
    assert_int_equal(c->sessions.redis_timeout_ms, 200);

    assert_int_equal(c->alerts.window_ms, 300000);
    assert_int_equal(c->alerts.for_ms, 60000);
    assert_true(c->alerts.availability < 0);
    assert_true(c->alerts.error_rate < 0);
    assert_int_equal(c->alerts.latency_p99_ms, 0);
    assert_int_equal(c->alerts.nnotify, 0);

    assert_null(c->admin.token);
    assert_int_equal(c->admin.client_keys.n, 0);
}

static void test_defaults(void **state)
{
    static const char *const empties[] = {
        "", "# nothing here\n\n   # at all\n", "---\n", "~\n", "---\n# comment\n...\n",
        "server:\nrouting:\n# all commented out\n",
    };
    struct config *c;
    size_t i;

    put(state, "hosts.json", GAIA_HOSTS);
    c = load_ok(state);                    /* no policies.yaml at all */
    check_all_defaults(c);
    config_unref(c);
    for (i = 0; i < sizeof(empties) / sizeof(empties[0]); i++) {
        put(state, "policies.yaml", empties[i]);
        c = load_ok(state);
        check_all_defaults(c);
        config_unref(c);
    }
}

/* ---- policies.yaml, every section set ---------------------------------- */

static void test_policies_full(void **state)
{
    struct config *c;
    const struct cfg_fallback_chain *ch;

    put(state, "hosts.json", "{\"hosts\": [\"asia\", \"hyperliquid\", {\"name\": \"gpu-a\", \"url\": \"http://g\"}]}");
    put(state, "policies.yaml",
        "server:\n"
        "  listen: \"[::1]:9000\"\n"
        "  workers: 4\n"
        "  max_body_bytes: 1MB\n"
        "  max_header_bytes: 32768\n"
        "  client_timeout: 1.5\n"
        "  drain_timeout: 0\n"
        "  log: {file: /var/log/ig.log, level: debug, format: json}\n"
        "  access_log: {file: /var/log/access.log, format: json}\n"
        "routing:\n"
        "  strategy: consistent-hash\n"
        "  prefer_region: eu-west\n"
        "  sticky: {by: header, header: X-Session-Id}\n"
        "  hash_key: {by: header, header: X-User}\n"
        "  when_full: queue\n"
        "  queue_timeout: 250ms\n"
        "  latency: {decay: 2s}\n"
        "models:\n"
        "  fast: [llama-3.1-8b, qwen-2.5-7b]\n"
        "  default: llama-3.1-8b\n"
        "retry:\n"
        "  max_attempts: 5\n"
        "  backoff: {type: linear, initial: 50ms, max: 2s, jitter: none}\n"
        "  on: [network_error, 5xx, 4xx, timeout, 429, \"503\"]\n"
        "  respect_retry_after: false\n"
        "  per_try_timeout: 10s\n"
        "  deadline: 2m\n"
        "  budget: {ratio: 0.5, window: 1m, min_retries: 0}\n"
        "circuit_breaker:\n"
        "  enabled: false\n"
        "  failure_threshold: 7\n"
        "  window: {size: 50, minimum_requests: 5}\n"
        "  error_rate: 1\n"
        "  slow_call: {latency: 3s, rate: 0.25}\n"
        "  timeout: 20s\n"
        "  reset_timeout: 1m\n"
        "  half_open_requests: 3\n"
        "  recovery: {strategy: gradual, duration: 10m, step: 0.2}\n"
        "fallback:\n"
        "  chains:\n"
        "    - match: fast\n"
        "      mode: parallel\n"
        "      race: 3\n"
        "      stop_on_success: false\n"
        "      timeout: 45s\n"
        "      steps:\n"
        "        - {model: llama-3.1-8b, hosts: [asia, gpu-a], timeout: 5s}\n"
        "        - model: qwen-2.5-7b\n"
        "        - hosts: [hyperliquid]\n"
        "    - match: \"*\"\n"
        "      steps: [{model: default}]\n"
        "health_check:\n"
        "  enabled: true\n"
        "  interval: 30s\n"
        "  timeout: 30s\n"
        "  path: /info\n"
        "  healthy_threshold: 1\n"
        "  unhealthy_threshold: 5\n"
        "  discover_models: true\n"
        "  passive: false\n"
        "sessions:\n"
        "  store: redis\n"
        "  ttl: 1h\n"
        "  max_entries: 10\n"
        "  redis: {url: \"redis://:pw@10.0.0.1:6380/2\", prefix: \"ig:\", timeout: 1s}\n"
        "alerts:\n"
        "  window: 10m\n"
        "  for: 0\n"
        "  thresholds: {availability: 0.99, error_rate: 0.05, latency_p99: 1500ms}\n"
        "admin:\n"
        "  token: admintoken\n"
        "  client_keys: [ck-1, ck-2]\n");
    c = load_ok(state);
    assert_string_equal(c->server.listen, "[::1]:9000");
    assert_int_equal(c->server.workers, 4);
    assert_int_equal(c->server.max_body_bytes, 1024 * 1024);
    assert_int_equal(c->server.max_header_bytes, 32768);
    assert_int_equal(c->server.client_timeout_ms, 1500);
    assert_int_equal(c->server.drain_timeout_ms, 0);
    assert_string_equal(c->server.log_file, "/var/log/ig.log");
    assert_int_equal(c->server.log_level, LOGL_DEBUG);
    assert_int_equal(c->server.log_format, LOGF_JSON);
    assert_string_equal(c->server.access_log, "/var/log/access.log");
    assert_int_equal(c->server.access_log_format, LOGF_JSON);

    assert_int_equal(c->routing.strategy, STRAT_CONSISTENT_HASH);
    assert_string_equal(config_strategy_name(c->routing.strategy), "consistent-hash");
    assert_string_equal(c->routing.prefer_region, "eu-west");
    assert_int_equal(c->routing.sticky, AFF_HEADER);
    assert_string_equal(c->routing.sticky_header, "X-Session-Id");
    assert_int_equal(c->routing.hash_key, AFF_HEADER);
    assert_string_equal(c->routing.hash_header, "X-User");
    assert_int_equal(c->routing.when_full, WHEN_FULL_QUEUE);
    assert_int_equal(c->routing.queue_timeout_ms, 250);
    assert_int_equal(c->routing.latency_decay_ms, 2000);

    assert_int_equal(c->nmodels, 2);
    assert_string_equal(config_model_group(c, "fast")->models.v[1], "qwen-2.5-7b");
    assert_int_equal(config_model_group(c, "fast")->models.n, 2);
    assert_int_equal(config_model_group(c, "default")->models.n, 1);
    assert_string_equal(config_model_group(c, "default")->models.v[0], "llama-3.1-8b");
    assert_null(config_model_group(c, "slow"));

    assert_int_equal(c->retry.max_attempts, 5);
    assert_int_equal(c->retry.backoff, BACKOFF_LINEAR);
    assert_int_equal(c->retry.backoff_initial_ms, 50);
    assert_int_equal(c->retry.backoff_max_ms, 2000);
    assert_int_equal(c->retry.jitter, JITTER_NONE);
    assert_int_equal(c->retry.on, RETRY_ON_NETWORK_ERROR | RETRY_ON_TIMEOUT | RETRY_ON_5XX | RETRY_ON_4XX);
    assert_int_equal(c->retry.non_codes, 2);
    assert_int_equal(c->retry.on_codes[0], 429);
    assert_int_equal(c->retry.on_codes[1], 503);
    assert_int_equal(c->retry.respect_retry_after, 0);
    assert_int_equal(c->retry.per_try_timeout_ms, 10000);
    assert_int_equal(c->retry.deadline_ms, 120000);
    assert_true(c->retry.budget_ratio == 0.5);
    assert_int_equal(c->retry.budget_window_ms, 60000);
    assert_int_equal(c->retry.budget_min_retries, 0);

    assert_int_equal(c->breaker.enabled, 0);
    assert_int_equal(c->breaker.failure_threshold, 7);
    assert_int_equal(c->breaker.window_size, 50);
    assert_int_equal(c->breaker.minimum_requests, 5);
    assert_true(c->breaker.error_rate == 1.0);
    assert_int_equal(c->breaker.slow_call_latency_ms, 3000);
    assert_true(c->breaker.slow_call_rate == 0.25);
    assert_int_equal(c->breaker.timeout_ms, 20000);
    assert_int_equal(c->breaker.reset_timeout_ms, 60000);
    assert_int_equal(c->breaker.half_open_requests, 3);
    assert_int_equal(c->breaker.recovery, RECOVERY_GRADUAL);
    assert_int_equal(c->breaker.recovery_duration_ms, 600000);
    assert_true(c->breaker.recovery_step == 0.2);

    assert_int_equal(c->fallback.nchains, 2);
    ch = &c->fallback.chains[0];
    assert_string_equal(ch->match, "fast");
    assert_int_equal(ch->mode, FALLBACK_PARALLEL);
    assert_int_equal(ch->race, 3);
    assert_int_equal(ch->stop_on_success, 0);
    assert_int_equal(ch->timeout_ms, 45000);
    assert_int_equal(ch->nsteps, 3);
    assert_string_equal(ch->steps[0].model, "llama-3.1-8b");
    assert_int_equal(ch->steps[0].hosts.n, 2);
    assert_string_equal(ch->steps[0].hosts.v[1], "gpu-a");
    assert_int_equal(ch->steps[0].timeout_ms, 5000);
    assert_string_equal(ch->steps[1].model, "qwen-2.5-7b");
    assert_int_equal(ch->steps[1].hosts.n, 0);
    assert_int_equal(ch->steps[1].timeout_ms, 0);
    assert_null(ch->steps[2].model);
    assert_string_equal(ch->steps[2].hosts.v[0], "hyperliquid");
    ch = &c->fallback.chains[1];
    assert_string_equal(ch->match, "*");
    assert_int_equal(ch->mode, FALLBACK_SEQUENTIAL);
    assert_int_equal(ch->race, 2);
    assert_int_equal(ch->stop_on_success, 1);
    assert_int_equal(ch->timeout_ms, 0);
    assert_int_equal(ch->nsteps, 1);

    assert_int_equal(c->health.interval_ms, 30000);
    assert_int_equal(c->health.timeout_ms, 30000);
    assert_string_equal(c->health.path, "/info");
    assert_int_equal(c->health.healthy_threshold, 1);
    assert_int_equal(c->health.unhealthy_threshold, 5);
    assert_int_equal(c->health.discover_models, 1);
    assert_int_equal(c->health.passive, 0);

    assert_int_equal(c->sessions.store, STORE_REDIS);
    assert_int_equal(c->sessions.ttl_ms, 3600000);
    assert_int_equal(c->sessions.max_entries, 10);
    assert_string_equal(c->sessions.redis_url, "redis://:pw@10.0.0.1:6380/2");
    assert_string_equal(c->sessions.redis_prefix, "ig:");
    assert_int_equal(c->sessions.redis_timeout_ms, 1000);

    assert_int_equal(c->alerts.window_ms, 600000);
    assert_int_equal(c->alerts.for_ms, 0);
    assert_true(c->alerts.availability == 0.99);
    assert_true(c->alerts.error_rate == 0.05);
    assert_int_equal(c->alerts.latency_p99_ms, 1500);

    assert_string_equal(c->admin.token, "admintoken");
    assert_int_equal(c->admin.client_keys.n, 2);
    assert_string_equal(c->admin.client_keys.v[1], "ck-2");
    config_unref(c);
}

static void test_access_log_forms(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml", "server:\n  access_log: \"-\"\n  log: {file: \"-\"}\n");
    c = load_ok(state);
    assert_string_equal(c->server.access_log, "-");
    assert_null(c->server.log_file);
    config_unref(c);

    put(state, "policies.yaml", "server:\n  access_log: \"off\"\n");
    c = load_ok(state);
    assert_null(c->server.access_log);
    config_unref(c);

    put(state, "policies.yaml", "server:\n  access_log: /var/log/a.log\n");
    c = load_ok(state);
    assert_string_equal(c->server.access_log, "/var/log/a.log");
    assert_int_equal(c->server.access_log_format, LOGF_TEXT);
    config_unref(c);

    put(state, "policies.yaml", "server:\n  access_log: {format: json}\n");
    c = load_ok(state);
    assert_string_equal(c->server.access_log, "-");
    assert_int_equal(c->server.access_log_format, LOGF_JSON);
    config_unref(c);

    put(state, "policies.yaml",
        "server:\n  access_log: [a]\n---\n");
    load_fails(state, "policies.yaml:3:1: $: only one YAML document is allowed", NULL);

    put(state, "policies.yaml",
        "server:\n  access_log: [a]\n  log: {file: \"\", level: loud, fmt: json}\n");
    load_fails(state,
        "policies.yaml:2:15: server.access_log: expected a file name, \"-\", \"off\" or a mapping with file and format",
        "policies.yaml:3:15: server.log.file: must not be empty",
        "policies.yaml:3:26: server.log.level: unknown value \"loud\", expected one of: debug, info, warn, error",
        "policies.yaml:3:32: server.log.fmt: unknown key",
        NULL);
}

/* ---- errors: several at once, exact positions --------------------------- */

static void test_several_errors_at_once(void **state)
{
    put(state, "hosts.json",
        "{\"hosts\": [\"asia\",\n"
        "  {\"name\": \"gpu-a\", \"url\": \"http://10.0.0.5:8080\", \"weight\": \"3\", \"keys\": \"pool-b\"},\n"
        "  \"asia\"]}\n");
    put(state, "api-keys.json",
        "{\"apiKeys\": [\n"
        "  {\"key\": \"sk-aaaaaaaaaaaaaaaa\", \"pool\": \"pool-a\", \"hosts\": [\"gpu-b\"], \"isActive\": \"yes\"}\n"
        "]}\n");
    put(state, "policies.yaml",
        "server:\n"
        "  workers: 0\n"
        "  client_timeout: soon\n"
        "  max_body_bytes: 1TB\n"
        "retry:\n"
        "  max_attempts: 21\n"
        "  backoff:\n"
        "    initial: 10s\n"
        "routing:\n"
        "  stratgy: random\n");
    load_fails(state,
        "hosts.json:2:62: hosts[1].weight: expected an integer",
        "hosts.json:2:75: hosts[1].keys: no key in api-keys.json has pool \"pool-b\", did you mean \"pool-a\"?",
        "hosts.json:3:3: hosts[2]: duplicate host name \"asia\" (same as hosts[0])",
        "api-keys.json:2:62: apiKeys[0].hosts[0]: no host named \"gpu-b\" in hosts.json, did you mean \"gpu-a\"?",
        "api-keys.json:2:84: apiKeys[0].isActive: expected true or false",
        "policies.yaml:2:12: server.workers: must be between 1 and 64",
        "policies.yaml:3:19: server.client_timeout: expected a duration like \"250ms\" or \"2s\"",
        "policies.yaml:4:19: server.max_body_bytes: expected a size like \"64KB\" or \"1MB\"",
        "policies.yaml:6:17: retry.max_attempts: must be between 1 and 20",
        "policies.yaml:8:14: retry.backoff.initial: must not be more than retry.backoff.max (5s)",
        "policies.yaml:10:3: routing.stratgy: unknown key, did you mean \"strategy\"?",
        NULL);
}

static void test_did_you_mean(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml",
        "# retry policy\n"
        "retry:\n"
        "  backoff: {type: fixed}\n"
        "  max_attemps: 5\n"
        "retyr: {}\n"
        "circuit_breaker:\n"
        "  recovery: {stratgy: gradual}\n"
        "  zzzzzzzz: 1\n"
        "health_check: {path: v1/models, intervall: 5s}\n");
    load_fails(state,
        "policies.yaml:4:3: retry.max_attemps: unknown key, did you mean \"max_attempts\"?",
        "policies.yaml:5:1: retyr: unknown key, did you mean \"retry\"?",
        "policies.yaml:7:14: circuit_breaker.recovery.stratgy: unknown key, did you mean \"strategy\"?",
        "policies.yaml:8:3: circuit_breaker.zzzzzzzz: unknown key",
        "policies.yaml:9:22: health_check.path: must start with \"/\"",
        "policies.yaml:9:33: health_check.intervall: unknown key, did you mean \"interval\"?",
        NULL);

    del(state, "policies.yaml");
    put(state, "api-keys.json", "{\"api_keys\": []}");
    load_fails(state,
        "api-keys.json:1:1: apiKeys: missing required key",
        "api-keys.json:1:2: api_keys: unknown key, did you mean \"apiKeys\"?",
        NULL);
}

static void test_types_and_ranges(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml",
        "server:\n"
        "  listen: 8080\n"
        "  max_header_bytes: 512\n"
        "  client_timeout: 2h\n"
        "  drain_timeout: -1\n"
        "routing:\n"
        "  hosts_template: \"https://gaia.domains\"\n"
        "  queue_timeout: 1.5s\n"
        "retry:\n"
        "  respect_retry_after: yes\n"
        "  budget: {ratio: 1.5, window: 500ms}\n"
        "  per_try_timeout: [1]\n"
        "circuit_breaker:\n"
        "  error_rate: \"0.5\"\n"
        "  recovery: {step: 0}\n"
        "  window: 7\n"
        "sessions:\n"
        "  ttl: 31d\n"
        "  max_entries: 2.5\n"
        "  store: redis-cluster\n"
        "alerts:\n"
        "  thresholds: {availability: 2}\n"
        "  notifications: {type: webhook}\n"
        "admin:\n"
        "  token: \"\"\n"
        "  client_keys: ck-1\n");
    load_fails(state,
        "policies.yaml:2:11: server.listen: expected a string (put the value in quotes)",
        "policies.yaml:3:21: server.max_header_bytes: must be between 1KB and 1MB",
        "policies.yaml:4:19: server.client_timeout: must be between 100ms and 1h",
        "policies.yaml:5:18: server.drain_timeout: must be between 0 and 1h",
        "policies.yaml:7:19: routing.hosts_template: must contain \"{name}\"",
        "policies.yaml:10:24: retry.respect_retry_after: expected true or false",
        "policies.yaml:11:19: retry.budget.ratio: must be between 0 and 1",
        "policies.yaml:11:32: retry.budget.window: must be between 1s and 1h",
        "policies.yaml:12:20: retry.per_try_timeout: expected a duration like \"250ms\" or \"2s\"",
        "policies.yaml:14:15: circuit_breaker.error_rate: expected a number",
        "policies.yaml:15:20: circuit_breaker.recovery.step: must be greater than 0 and at most 1",
        "policies.yaml:16:11: circuit_breaker.window: expected a mapping",
        "policies.yaml:18:8: sessions.ttl: expected a duration like \"250ms\" or \"2s\"",
        "policies.yaml:19:16: sessions.max_entries: expected an integer",
        "policies.yaml:20:10: sessions.store: unknown value \"redis-cluster\", expected one of: memory, redis",
        "policies.yaml:22:30: alerts.thresholds.availability: must be between 0 and 1",
        "policies.yaml:23:18: alerts.notifications: expected a list of notifications",
        "policies.yaml:25:10: admin.token: must not be empty",
        "policies.yaml:26:16: admin.client_keys: expected a list of strings",
        NULL);

    put(state, "policies.yaml",
        "sessions:\n  redis: {url: \"unix:redis.sock\"}\nserver: {listen: \":8080\"}\n");
    load_fails(state,
        "policies.yaml:2:16: sessions.redis.url: expected redis://[[user]:password@]host[:port][/db] or unix:/path",
        "policies.yaml:3:18: server.listen: expected ADDR:PORT or [V6ADDR]:PORT",
        NULL);
    put(state, "policies.yaml",
        "sessions:\n  redis: {url: \"unix:/run/redis.sock\"}\nserver: {listen: \"0.0.0.0:65535\"}\n");
    config_unref(load_ok(state));
}

static void test_cross_field_checks(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml",
        "retry:\n  backoff: {initial: 2s, max: 1s}\nhealth_check:\n  interval: 1s\n");
    load_fails(state,
        "policies.yaml:2:31: retry.backoff.max: must not be less than retry.backoff.initial (2s)",
        NULL);
}

/* A probe may take longer than the interval (the prober skips the turns
 * that come while one runs), as HAProxy and Envoy allow. */
static void test_health_timeout_over_interval(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml", "health_check:\n  interval: 1s\n  timeout: 10s\n");
    c = load_ok(state);
    assert_int_equal(c->health.interval_ms, 1000);
    assert_int_equal(c->health.timeout_ms, 10000);
    config_unref(c);
}

static void test_root_shapes(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "api-keys.json", "\"sk-not-an-object-1\"");
    put(state, "policies.yaml", "- server\n- retry\n");
    load_fails(state,
        "api-keys.json:1:1: $: expected an object with key \"apiKeys\"",
        "policies.yaml:1:1: $: expected a mapping of sections (server, routing, models, retry, ...)",
        NULL);

    put(state, "api-keys.json", "{\"apiKeys\": {}}");
    put(state, "policies.yaml", "just a string\n");
    load_fails(state,
        "api-keys.json:1:13: apiKeys: expected an array of key objects",
        "policies.yaml:1:1: $: expected a mapping of sections (server, routing, models, retry, ...)",
        NULL);
}

/* ---- ${NAME} ----------------------------------------------------------- */

static void test_env_interpolation(void **state)
{
    struct config *c;

    setenv("IG_TEST_HOST", "asia", 1);
    setenv("IG_TEST_KEY", "sk-from-environment-0042", 1);
    setenv("IG_TEST_WORKERS", "4", 1);
    setenv("IG_TEST_TOKEN", "123456", 1);
    setenv("IG_TEST_EMPTY", "", 1);
    put(state, "hosts.json",
        "{\"hosts\": [\"${IG_TEST_HOST}\", {\"name\": \"n-${IG_TEST_WORKERS}\", \"url\": \"https://${IG_TEST_HOST}.example:${IG_TEST_WORKERS}443\"}]}");
    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"key\": \"${IG_TEST_KEY}\", \"description\": \"$${not} ${IG_TEST_EMPTY}$$x $x$\"}]}");
    /* In YAML flow collections ([...], {...}) braces are syntax: quote ${} there. */
    put(state, "policies.yaml",
        "admin:\n"
        "  client_keys: [${IG_TEST_KEY}]\n");
    load_fails(state,
        "policies.yaml:2:18: admin.client_keys: YAML syntax error: did not find expected ',' or ']'"
        " (while parsing a flow sequence at line 2, column 16)",
        NULL);
    put(state, "policies.yaml",
        "retry:\n"
        "  on:\n"
        "    - ${IG_TEST_CODE:-x}\n");
    load_fails(state,
        "policies.yaml:3:7: retry.on[0]: invalid variable name in \"${...}\" (expected [A-Za-z_][A-Za-z0-9_]*)",
        NULL);

    setenv("IG_TEST_CODE", "", 1);
    put(state, "policies.yaml",
        "server:\n"
        "  workers: ${IG_TEST_WORKERS}\n"
        "  client_timeout: ${IG_TEST_WORKERS}s\n"
        "admin:\n"
        "  token: ${IG_TEST_TOKEN}\n"
        "  client_keys: [\"${IG_TEST_TOKEN}\", \"${IG_TEST_KEY}\"]\n"
        "retry:\n"
        "  on:\n"
        "    - 5xx\n"
        "    - ${IG_TEST_CODE}429\n");
    c = load_ok(state);
    assert_string_equal(c->hosts[0].name, "asia");
    assert_string_equal(c->hosts[0].url, "https://asia.gaia.domains");
    assert_string_equal(c->hosts[1].name, "n-4");
    assert_string_equal(c->hosts[1].url, "https://asia.example:4443");
    assert_string_equal(c->keys[0].secret, "sk-from-environment-0042");
    assert_string_equal(c->keys[0].description, "${not} $$x $x$");
    assert_int_equal(c->server.workers, 4);                  /* typed after expansion */
    assert_int_equal(c->server.client_timeout_ms, 4000);
    assert_string_equal(c->admin.token, "123456");           /* a string stays a string */
    assert_string_equal(c->admin.client_keys.v[0], "123456");
    assert_string_equal(c->admin.client_keys.v[1], "sk-from-environment-0042");
    assert_int_equal(c->retry.non_codes, 1);
    assert_int_equal(c->retry.on_codes[0], 429);
    config_unref(c);
}

static void test_env_unset(void **state)
{
    unsetenv("IG_TEST_UNSET_A");
    unsetenv("IG_TEST_UNSET_B");
    setenv("IG_TEST_SET", "x", 1);
    put(state, "hosts.json", "{\"hosts\": [\"asia\", \"${IG_TEST_UNSET_A}\"]}");
    put(state, "api-keys.json",
        "{\"apiKeys\": [\n"
        "  {\"key\": \"${IG_TEST_UNSET_A}-${IG_TEST_UNSET_B}\"},\n"
        "  {\"key\": \"${IG_TEST_UNSET_A}-${IG_TEST_UNSET_B}\", \"hosts\": [\"asia\", \"${IG_TEST_UNSET_B}\"]}\n"
        "]}\n");
    put(state, "policies.yaml",
        "admin:\n  token: \"${IG_TEST_SET}${IG_TEST_UNSET_B}\"\n  client_keys: [\"${IG_TEST_SET\"]\n");
    load_fails(state,
        "hosts.json:1:20: hosts[1]: environment variable \"IG_TEST_UNSET_A\" is not set",
        "api-keys.json:2:11: apiKeys[0].key: environment variable \"IG_TEST_UNSET_A\" is not set",
        "api-keys.json:2:11: apiKeys[0].key: environment variable \"IG_TEST_UNSET_B\" is not set",
        "api-keys.json:3:11: apiKeys[1].key: environment variable \"IG_TEST_UNSET_A\" is not set",
        "api-keys.json:3:11: apiKeys[1].key: environment variable \"IG_TEST_UNSET_B\" is not set",
        "api-keys.json:3:70: apiKeys[1].hosts[1]: environment variable \"IG_TEST_UNSET_B\" is not set",
        "policies.yaml:2:10: admin.token: environment variable \"IG_TEST_UNSET_B\" is not set",
        "policies.yaml:3:17: admin.client_keys[0]: unterminated \"${\" (write \"$${\" for a literal \"${\")",
        NULL);
}

/* ---- api-keys.json ----------------------------------------------------- */

static void test_key_file(void **state)
{
    char path[256], json[640];
    struct config *c;

    snprintf(path, sizeof(path), "%s/secrets", D(state));
    assert_int_equal(mkdir(path, 0700), 0);
    put(state, "secrets/k1", "  sk-from-file-000001 \n\n");
    put(state, "k2", "sk-absolute-path-0002");
    put(state, "hosts.json", GAIA_HOSTS);
    snprintf(json, sizeof(json),
             "{\"apiKeys\": [{\"key_file\": \"secrets/k1\", \"description\": \"relative\"},\n"
             "  {\"key_file\": \"%s/k2\", \"isActive\": false}]}", D(state));
    put(state, "api-keys.json", json);
    c = load_ok(state);
    assert_int_equal(c->nkeys, 2);
    assert_string_equal(c->keys[0].secret, "sk-from-file-000001");
    assert_string_equal(c->keys[0].description, "relative");
    assert_string_equal(c->keys[0].fingerprint, "sk-\xe2\x80\xa6" "0001");
    assert_string_equal(c->keys[1].secret, "sk-absolute-path-0002");
    assert_int_equal(c->keys[1].active, 0);
    assert_int_equal(config_key_usable(&c->keys[1], &c->hosts[0]), 0);
    config_unref(c);

    put(state, "empty", " \n\t\n");
    put(state, "two", "sk-one-0000000001\nsk-two-0000000002\n");
    put(state, "api-keys.json",
        "{\"apiKeys\": [\n"
        "  {\"key_file\": \"missing\"},\n"
        "  {\"key_file\": \"empty\"},\n"
        "  {\"key_file\": \"two\"},\n"
        "  {\"key_file\": \"\"},\n"
        "  {\"key_file\": \"secrets/k1\", \"key\": \"sk-both-00000000001\"}\n"
        "]}\n");
    load_fails(state,
        "api-keys.json:2:16: apiKeys[0].key_file: cannot read the key_file: No such file or directory",
        "api-keys.json:3:16: apiKeys[1].key_file: the key_file is empty",
        "api-keys.json:4:16: apiKeys[2].key_file: the key_file's content: a key must be printable ASCII without spaces or control characters",
        "api-keys.json:5:16: apiKeys[3].key_file: must not be empty",
        "api-keys.json:6:3: apiKeys[4]: use either \"key\" or \"key_file\", not both",
        NULL);
}

static void test_key_fields_and_errors(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "api-keys.json",
        "{\"apiKeys\": [\n"
        "  {\"key\": \"\"},\n"
        "  {\"key\": \"sk-has space-000001\"},\n"
        "  {\"description\": \"nothing\"},\n"
        "  \"sk-bare-string-0000001\",\n"
        "  {\"key\": \"sk-good-key-00000001\", \"weight\": 0, \"pool\": \"\", \"hosts\": \"asia\", \"isactive\": true}\n"
        "]}\n");
    load_fails(state,
        "api-keys.json:2:11: apiKeys[0].key: must not be empty",
        "api-keys.json:3:11: apiKeys[1].key: a key must be printable ASCII without spaces or control characters",
        "api-keys.json:4:3: apiKeys[2].key: missing required key \"key\" (or \"key_file\")",
        "api-keys.json:5:3: apiKeys[3]: expected an object with \"key\" or \"key_file\"",
        "api-keys.json:6:45: apiKeys[4].weight: must be between 1 and 1000",
        "api-keys.json:6:56: apiKeys[4].pool: must not be empty",
        "api-keys.json:6:69: apiKeys[4].hosts: expected an array of strings",
        "api-keys.json:6:77: apiKeys[4].isactive: unknown key, did you mean \"isActive\"?",
        NULL);
}

static void test_fingerprints(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"key\": \"sk-abcdefghijklmnop\"}, {\"key\": \"short\"}, {\"key\": \"a\"},\n"
        " {\"key\": \"abcdefghijkl\"}, {\"key\": \"-bcdefghijklm\"}, {\"key\": \"abc-efghijkl\"},\n"
        " {\"key\": \"abcd-fghijklm\"}, {\"key\": \"sk-abcdefgh\"}]}");
    c = load_ok(state);
    assert_int_equal(c->nkeys, 8);
    assert_string_equal(c->keys[0].id, "23993025ce1aaec2");
    assert_string_equal(c->keys[0].fingerprint, "sk-\xe2\x80\xa6mnop");
    assert_string_equal(c->keys[1].id, "f6915548f781cd55");
    assert_string_equal(c->keys[1].fingerprint, "\xe2\x80\xa6" "f69155");  /* < 12 chars */
    assert_string_equal(c->keys[2].id, "af63dc4c8601ec8c");                /* FNV-1a("a") */
    assert_string_equal(c->keys[2].fingerprint, "\xe2\x80\xa6" "af63dc");
    assert_string_equal(c->keys[3].fingerprint, "\xe2\x80\xa6ijkl");       /* exactly 12, no '-' */
    assert_string_equal(c->keys[4].fingerprint, "-\xe2\x80\xa6jklm");      /* '-' first */
    assert_string_equal(c->keys[5].fingerprint, "abc-\xe2\x80\xa6ijkl");   /* '-' 4th */
    assert_string_equal(c->keys[6].fingerprint, "\xe2\x80\xa6jklm");       /* '-' 5th: no prefix */
    assert_int_equal(strlen(c->keys[7].secret), 11);
    assert_int_equal(strncmp(c->keys[7].fingerprint, "\xe2\x80\xa6", 3), 0);
    assert_int_equal(strlen(c->keys[7].fingerprint), 3 + 6);
    assert_int_equal(strlen(c->keys[0].id), 16);
    config_unref(c);
}

static void test_key_usable(void **state)
{
    struct config *c;
    const struct cfg_host *asia, *gpu, *cpu;

    put(state, "hosts.json",
        "{\"hosts\": [\"asia\", {\"name\": \"gpu\", \"keys\": \"p1\"}, {\"name\": \"cpu\", \"keys\": \"p1\"}]}");
    put(state, "api-keys.json",
        "{\"apiKeys\": [\n"
        "  {\"key\": \"k-default-000000\"},\n"
        "  {\"key\": \"k-inactive-00000\", \"isActive\": false},\n"
        "  {\"key\": \"k-pool1-00000000\", \"pool\": \"p1\"},\n"
        "  {\"key\": \"k-pool1-gpu-0000\", \"pool\": \"p1\", \"hosts\": [\"gpu\"]},\n"
        "  {\"key\": \"k-only-asia-0000\", \"hosts\": [\"asia\"]},\n"
        "  {\"key\": \"k-pool2-00000000\", \"pool\": \"p2\"}\n"
        "]}\n");
    c = load_ok(state);
    asia = config_host_by_name(c, "asia");
    gpu = config_host_by_name(c, "gpu");
    cpu = config_host_by_name(c, "cpu");
    assert_non_null(asia);
    assert_non_null(gpu);
    assert_non_null(cpu);
    assert_string_equal(gpu->url, "https://gpu.gaia.domains");
    assert_int_equal(config_key_usable(&c->keys[0], asia), 1);
    assert_int_equal(config_key_usable(&c->keys[0], gpu), 0);   /* pool differs */
    assert_int_equal(config_key_usable(&c->keys[1], asia), 0);  /* inactive */
    assert_int_equal(config_key_usable(&c->keys[2], asia), 0);
    assert_int_equal(config_key_usable(&c->keys[2], gpu), 1);
    assert_int_equal(config_key_usable(&c->keys[2], cpu), 1);
    assert_int_equal(config_key_usable(&c->keys[3], gpu), 1);
    assert_int_equal(config_key_usable(&c->keys[3], cpu), 0);   /* not in its hosts */
    assert_int_equal(config_key_usable(&c->keys[4], asia), 1);
    assert_int_equal(config_key_usable(&c->keys[5], gpu), 0);
    config_unref(c);
}

static void test_pool_and_host_refs(void **state)
{
    put(state, "hosts.json",
        "{\"hosts\": [\"asia\", {\"name\": \"gpu\", \"keys\": \"poool\"}]}");
    load_fails(state, "hosts.json:1:44: hosts[1].keys: no key in api-keys.json has pool \"poool\"", NULL);

    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"key\": \"k-1234567890\", \"pool\": \"pool\", \"hosts\": [\"asia\", \"gpux\", \"zzz\"]}]}");
    load_fails(state,
        "hosts.json:1:44: hosts[1].keys: no key in api-keys.json has pool \"poool\", did you mean \"pool\"?",
        "api-keys.json:1:72: apiKeys[0].hosts[1]: no host named \"gpux\" in hosts.json, did you mean \"gpu\"?",
        "api-keys.json:1:80: apiKeys[0].hosts[2]: no host named \"zzz\" in hosts.json",
        NULL);

    /* a broken hosts.json does not also produce "no host named" noise */
    put(state, "hosts.json", "{\"hosts\": [\"asia\",]}");
    load_fails(state, "hosts.json:1:19: hosts: trailing comma before ']'", NULL);
}

static void test_duplicates(void **state)
{
    put(state, "hosts.json",
        "{\"hosts\": [\"asia\", \"https://asia\", {\"url\": \"http://asia/\"}, {\"name\": \"asia\"},\n"
        " \"hyperliquid\"], \"hosts\": []}");
    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"key\": \"sk-dup-secret-0001\"}, {\"key\": \"sk-other-00000001\"},\n"
        "  {\"key\": \"sk-dup-secret-0001\", \"description\": \"again\"}, {\"key\": \"sk-other-00000001\"}]}");
    put(state, "policies.yaml",
        "models:\n  fast: a\n  fast: b\nretry:\n  max_attempts: 2\nretry: {}\n");
    load_fails(state,
        "hosts.json:1:20: hosts[1]: duplicate host name \"asia\" (same as hosts[0])",
        "hosts.json:1:44: hosts[2].url: duplicate host name \"asia\" (same as hosts[0])",
        "hosts.json:1:70: hosts[3].name: duplicate host name \"asia\" (same as hosts[0])",
        "hosts.json:2:18: hosts: duplicate key (first at line 1, column 2)",
        "api-keys.json:2:11: apiKeys[2].key: duplicate key (same as apiKeys[0])",
        "api-keys.json:2:66: apiKeys[3].key: duplicate key (same as apiKeys[1])",
        "policies.yaml:3:3: models.fast: duplicate key (first at line 2, column 3)",
        "policies.yaml:6:1: retry: duplicate key (first at line 4, column 1)",
        NULL);

    /* a key read from key_file: at the key_file value */
    del(state, "policies.yaml");
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "kf", "sk-dup-secret-0001\n");
    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"key\": \"sk-dup-secret-0001\"},\n"
        "  {\"description\": \"from a file\", \"key_file\": \"kf\"}]}");
    load_fails(state,
        "api-keys.json:2:46: apiKeys[1].key_file: duplicate key (same as apiKeys[0])",
        NULL);
}

/* An unknown key of api-keys.json is named only when it is a near miss of
 * a known key: anything else may be a secret in the wrong place. */
static void test_key_unknown_names(void **state)
{
    char *all;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "api-keys.json",
        "{\"apiKey\": 1, \"sk-TOPLEVEL-000001\": 2, \"apiKeys\": [\n"
        "  {\"key\": \"sk-one-0000000001\", \"key_fiel\": \"kf\", \"descripton\": \"\"},\n"
        "  {\"sk-ENTRYKEY-00001\": \"x\", \"key\": \"sk-two-0000000001\", \"zz\": 1}]}\n");
    load_fails(state,
        "api-keys.json:1:2: apiKey: unknown key, did you mean \"apiKeys\"?",
        "api-keys.json:1:15: $: unknown key",
        "api-keys.json:2:32: apiKeys[0].key_fiel: unknown key, did you mean \"key_file\"?",
        "api-keys.json:2:50: apiKeys[0].descripton: unknown key, did you mean \"description\"?",
        "api-keys.json:3:4: apiKeys[1]: unknown key",
        "api-keys.json:3:58: apiKeys[1]: unknown key",
        NULL);
    all = load_errors(state);
    assert_null(strstr(all, "TOPLEVEL"));
    assert_null(strstr(all, "ENTRYKEY"));
    free(all);
}

/* A secret must never show in an error, whatever went wrong around it. */
static void test_secrets_never_in_errors(void **state)
{
    static const char *const secrets[] = {
        "sk-SECRETVALUE-0001", "SECRETVALUE2", "sk-SECRET VALUE-3", "sk-SECRETVALUE-0004",
        "SECRETPASSWORD5", "SECRETCLIENTKEY6", "SECRETFROMFILE7",
    };
    char *all;
    size_t i;

    setenv("IG_TEST_SECRET_ENV", "sk-SECRETVALUE-0004", 1);
    put(state, "hosts.json", "{\"hosts\": [\"asia\", {\"name\": \"g\", \"keys\": \"p\"}]}");
    put(state, "kf", "SECRETFROMFILE7 extra");
    put(state, "api-keys.json",
        "{\"apiKeys\": [\n"
        "  {\"key\": \"sk-SECRETVALUE-0001\", \"pool\": \"q\", \"hosts\": [\"nope\"]},\n"
        "  {\"key\": \"sk-SECRETVALUE-0001\"},\n"
        "  {\"key\": \"SECRETVALUE2\", \"key_file\": \"kf\"},\n"
        "  {\"key\": \"sk-SECRET VALUE-3\"},\n"
        "  {\"key\": \"${IG_TEST_SECRET_ENV}\", \"wieght\": 1},\n"
        "  {\"key\": \"${IG_TEST_SECRET_ENV}\"},\n"
        "  {\"key_file\": \"kf\"},\n"
        "  {\"key\": 12345678901234}\n"
        "]}\n");
    put(state, "policies.yaml",
        "alerts:\n"
        "  notifications:\n"
        "    - {type: command, password: SECRETPASSWORD5, command: [x]}\n"
        "    - {type: email, smtp_url: \"smtp://h\", from: a, to: [b], password: [SECRETPASSWORD5]}\n"
        "admin:\n"
        "  client_keys: [SECRETCLIENTKEY6, 7]\n"
        "  token: [SECRETCLIENTKEY6]\n");
    all = load_errors(state);
    for (i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
        if (strstr(all, secrets[i]) || strstr(all, "SECRET"))
            print_message("leaked in:\n%s", all);
        assert_null(strstr(all, secrets[i]));
    }
    assert_null(strstr(all, "SECRET"));
    /* and the errors were there */
    assert_non_null(strstr(all, "apiKeys[1].key: duplicate key (same as apiKeys[0])"));
    assert_non_null(strstr(all, "apiKeys[5].key: duplicate key (same as apiKeys[4])"));
    assert_non_null(strstr(all, "apiKeys[2]: use either"));
    assert_non_null(strstr(all, "apiKeys[3].key: a key must be printable ASCII"));
    assert_non_null(strstr(all, "apiKeys[6].key_file: the key_file's content: a key must be printable"));
    assert_non_null(strstr(all, "apiKeys[7].key: expected a string"));
    assert_non_null(strstr(all, "alerts.notifications[0].password: not used by"));
    assert_non_null(strstr(all, "alerts.notifications[1].password: expected a string"));
    assert_non_null(strstr(all, "admin.client_keys[1]: expected a string"));
    free(all);
}

/* Found by fuzzing: in a misshapen api-keys.json a secret can sit where a
 * key name belongs, or be pasted into key_file; it must not come out. */
static void test_secrets_in_misshapen_files(void **state)
{
    char *all;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "api-keys.json", "{\"apiKeys\": [{\"key\", \"sk-LEAKCANARY-0001\"}]}");
    load_fails(state, "api-keys.json:1:20: apiKeys[0]: expected ':' after the key, found ','", NULL);

    put(state, "api-keys.json", "{\"apiKeys\": [{\"key\": \"x\", \"sk-LEAKCANARY-0002\" \"d\"}]}");
    load_fails(state, "api-keys.json:1:48: apiKeys[0]: expected ':' after the key, found '\"'", NULL);

    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"sk-LEAKCANARY-0003\": \"main\", \"key\": \"sk-LEAKCANARY-0004\"},\n"
        " {\"key_file\": \"sk-LEAKCANARY-0005\"},\n"
        " {\"key\": \"sk-LEAKCANARY-0006\", \"hosts\": [\"sk-LEAKCANARY-0006\"]},\n"
        " {\"key\": \"sk-LEAKCANARY-0006\", \"sk-LEAKCANARY-0007\": {\"a\": [1}}]}\n");
    all = load_errors(state);
    if (strstr(all, "LEAKCANARY"))
        print_message("leaked in:\n%s", all);
    assert_null(strstr(all, "LEAKCANARY"));
    free(all);

    put(state, "api-keys.json",
        "{\"apiKeys\": [{\"sk-LEAKCANARY-0003\": \"main\", \"key\": \"sk-LEAKCANARY-0004\"},\n"
        " {\"key_file\": \"sk-LEAKCANARY-0005\"},\n"
        " {\"key\": \"sk-LEAKCANARY-0006\", \"hosts\": [\"sk-LEAKCANARY-0006\"]},\n"
        " {\"key\": \"sk-LEAKCANARY-0006\", \"pool\": {\"sk-LEAKCANARY-0007\": 1}}]}\n");
    load_fails(state,
        "api-keys.json:1:15: apiKeys[0]: unknown key",
        "api-keys.json:2:15: apiKeys[1].key_file: cannot read the key_file: No such file or directory",
        "api-keys.json:3:42: apiKeys[2].hosts[0]: no host named \"[redacted]\" in hosts.json",
        "api-keys.json:4:10: apiKeys[3].key: duplicate key (same as apiKeys[2])",
        "api-keys.json:4:40: apiKeys[3].pool: expected a string",
        NULL);
}

/* ---- policies.yaml special shapes -------------------------------------- */

static void test_retry_on(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml", "retry:\n  on: []\n");
    c = load_ok(state);
    assert_int_equal(c->retry.on, 0);
    assert_int_equal(c->retry.non_codes, 0);
    config_unref(c);

    put(state, "policies.yaml", "retry:\n  on: [timeout, 502, 502, 4xx]\n");
    c = load_ok(state);
    assert_int_equal(c->retry.on, RETRY_ON_TIMEOUT | RETRY_ON_4XX);
    assert_int_equal(c->retry.non_codes, 1);
    assert_int_equal(c->retry.on_codes[0], 502);
    config_unref(c);

    put(state, "policies.yaml",
        "retry:\n  on: [network-error, 399, 5XX, true, \"abc\", {a: 1}]\n");
    load_fails(state,
        "policies.yaml:2:8: retry.on[0]: unknown value \"network-error\", did you mean \"network_error\"?",
        "policies.yaml:2:23: retry.on[1]: a status code must be between 400 and 599",
        "policies.yaml:2:28: retry.on[2]: unknown value \"5XX\", did you mean \"5xx\"?",
        "policies.yaml:2:33: retry.on[3]: expected network_error, timeout, 5xx, 4xx or a status code",
        "policies.yaml:2:39: retry.on[4]: unknown value \"abc\", expected network_error, timeout, 5xx, 4xx or a status code",
        "policies.yaml:2:46: retry.on[5]: expected network_error, timeout, 5xx, 4xx or a status code",
        NULL);

    put(state, "policies.yaml", "retry:\n  on: 5xx\n");
    load_fails(state,
        "policies.yaml:2:7: retry.on: expected a list like [network_error, timeout, 5xx, 429]", NULL);
}

static void test_affinity(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml", "routing:\n  sticky: {by: response_id}\n  hash_key: {by: user}\n");
    c = load_ok(state);
    assert_int_equal(c->routing.sticky, AFF_RESPONSE_ID);
    assert_null(c->routing.sticky_header);
    assert_int_equal(c->routing.hash_key, AFF_USER);
    config_unref(c);

    put(state, "policies.yaml",
        "routing:\n"
        "  sticky: {header: X-A}\n"
        "  hash_key: {by: response_id}\n"
        "---\n");
    load_fails(state, "policies.yaml:4:1: $: only one YAML document is allowed", NULL);

    put(state, "policies.yaml",
        "routing:\n"
        "  sticky: {header: X-A}\n"
        "  hash_key: {by: response_id, header: \"X A\"}\n");
    load_fails(state,
        "policies.yaml:2:11: routing.sticky.by: missing required key",
        "policies.yaml:3:18: routing.hash_key.by: unknown value \"response_id\", expected one of: user, header",
        "policies.yaml:3:39: routing.hash_key.header: not a valid HTTP header name",
        NULL);

    put(state, "policies.yaml",
        "routing:\n"
        "  sticky: {by: user, header: X-A}\n"
        "  hash_key:\n"
        "    by: header\n");
    load_fails(state,
        "policies.yaml:2:22: routing.sticky.header: only used when by is \"header\"",
        "policies.yaml:4:5: routing.hash_key.header: missing required key (by is \"header\")",
        NULL);
}

static void test_models(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml",
        "models:\n"
        "  empty: []\n"
        "  blank: \"\"\n"
        "  bad: {a: b}\n"
        "  num: 7\n"
        "  mixed: [a, 1]\n");
    load_fails(state,
        "policies.yaml:2:10: models.empty: must not be empty",
        "policies.yaml:3:10: models.blank: must not be empty",
        "policies.yaml:4:8: models.bad: expected a model name or a list of model names",
        "policies.yaml:5:8: models.num: expected a model name or a list of model names",
        "policies.yaml:6:14: models.mixed[1]: expected a string (put the value in quotes)",
        NULL);

    put(state, "policies.yaml", "models: [a, b]\n");
    load_fails(state, "policies.yaml:1:9: models: expected a mapping of names to a model or a list of models", NULL);

    put(state, "policies.yaml", "models:\n  \"llama-3.1\": x\n  a b: [c]\n");
    {
        struct config *c = load_ok(state);
        assert_non_null(config_model_group(c, "llama-3.1"));
        assert_non_null(config_model_group(c, "a b"));
        config_unref(c);
    }
}

static void test_fallback_errors(void **state)
{
    put(state, "hosts.json", "{\"hosts\": [\"asia\", \"hyperliquid\"]}");
    put(state, "policies.yaml",
        "fallback:\n"
        "  chains:\n"
        "    - steps: []\n"
        "      mode: race\n"
        "    - match: fast\n"
        "      race: 17\n"
        "      steps:\n"
        "        - {}\n"
        "        - {hosts: [asai, hyperliquid, nope], modle: x}\n"
        "        - 3\n"
        "    - match: \"*\"\n"
        "    - x\n"
        "  chain: []\n");
    load_fails(state,
        "policies.yaml:3:7: fallback.chains[0].match: missing required key",
        "policies.yaml:3:14: fallback.chains[0].steps: must not be empty",
        "policies.yaml:4:13: fallback.chains[0].mode: unknown value \"race\", expected one of: sequential, parallel",
        "policies.yaml:6:13: fallback.chains[1].race: must be between 1 and 16",
        "policies.yaml:8:11: fallback.chains[1].steps[0]: a step needs \"model\" or \"hosts\"",
        "policies.yaml:9:20: fallback.chains[1].steps[1].hosts[0]: no host named \"asai\" in hosts.json, did you mean \"asia\"?",
        "policies.yaml:9:39: fallback.chains[1].steps[1].hosts[2]: no host named \"nope\" in hosts.json",
        "policies.yaml:9:46: fallback.chains[1].steps[1].modle: unknown key, did you mean \"model\"?",
        "policies.yaml:10:11: fallback.chains[1].steps[2]: expected a mapping",
        "policies.yaml:11:7: fallback.chains[2].steps: missing required key",
        "policies.yaml:12:7: fallback.chains[3]: expected a mapping",
        "policies.yaml:13:3: fallback.chain: unknown key, did you mean \"chains\"?",
        NULL);
}

static void test_notifications(void **state)
{
    struct config *c;
    const struct cfg_notify *n;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml",
        "alerts:\n"
        "  notifications:\n"
        "    - {type: webhook, url: \"https://hooks.example/x\"}\n"
        "    - {type: webhook, url: \"https://hooks.slack.com/s\", format: slack, timeout: 2s}\n"
        "    - {type: slack, url: \"https://hooks.slack.com/t\"}\n"
        "    - {type: command, command: [/usr/bin/notify, --urgent]}\n"
        "    - type: email\n"
        "      smtp_url: \"smtps://mail.example:465\"\n"
        "      from: ig@example\n"
        "      to: [ops@example, dev@example]\n"
        "      username: ig\n"
        "      password: pw\n");
    c = load_ok(state);
    assert_int_equal(c->alerts.nnotify, 5);
    n = c->alerts.notify;
    assert_int_equal(n[0].type, NOTIFY_WEBHOOK);
    assert_string_equal(n[0].url, "https://hooks.example/x");
    assert_int_equal(n[0].timeout_ms, 5000);
    assert_int_equal(n[1].type, NOTIFY_SLACK);
    assert_int_equal(n[1].timeout_ms, 2000);
    assert_int_equal(n[2].type, NOTIFY_SLACK);
    assert_int_equal(n[3].type, NOTIFY_COMMAND);
    assert_int_equal(n[3].argv.n, 2);
    assert_string_equal(n[3].argv.v[1], "--urgent");
    assert_null(n[3].url);
    assert_int_equal(n[4].type, NOTIFY_EMAIL);
    assert_string_equal(n[4].smtp_url, "smtps://mail.example:465");
    assert_string_equal(n[4].from, "ig@example");
    assert_int_equal(n[4].to.n, 2);
    assert_string_equal(n[4].username, "ig");
    assert_string_equal(n[4].password, "pw");
    config_unref(c);

    put(state, "policies.yaml",
        "alerts:\n"
        "  notifications:\n"
        "    - {type: slack, format: json, command: [x], url: \"https://h\"}\n"
        "    - {type: command, command: []}\n"
        "    - {type: email, smtp_url: \"http://x\", to: []}\n"
        "    - {type: pager, url: \"https://h\"}\n"
        "    - {type: webhook, urll: \"https://h\"}\n"
        "    - {}\n");
    load_fails(state,
        "policies.yaml:3:21: alerts.notifications[0].format: not used by notifications of type \"slack\"",
        "policies.yaml:3:35: alerts.notifications[0].command: not used by notifications of type \"slack\"",
        "policies.yaml:4:32: alerts.notifications[1].command: must not be empty",
        "policies.yaml:5:7: alerts.notifications[2].from: missing required key",
        "policies.yaml:5:31: alerts.notifications[2].smtp_url: expected an smtp:// or smtps:// URL",
        "policies.yaml:5:47: alerts.notifications[2].to: must not be empty",
        "policies.yaml:6:14: alerts.notifications[3].type: unknown value \"pager\", expected one of: webhook, slack, command, email",
        "policies.yaml:7:7: alerts.notifications[4].url: missing required key",
        "policies.yaml:7:23: alerts.notifications[4].urll: unknown key, did you mean \"url\"?",
        "policies.yaml:8:7: alerts.notifications[5].type: missing required key",
        NULL);
}

/* ---- YAML specifics ---------------------------------------------------- */

static void test_yaml_syntax_error(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml", "retry:\n  max_attempts: 3\n   backoff: x\n");
    load_fails(state,
        "policies.yaml:3:11: retry: YAML syntax error: mapping values are not allowed in this context",
        NULL);

    put(state, "policies.yaml", "models:\n  fast: [a, b\nretry: {}\n");
    load_fails(state,
        "policies.yaml:3:6: models.fast: YAML syntax error: did not find expected ',' or ']'"
        " (while parsing a flow sequence at line 2, column 9)",
        NULL);

    put(state, "policies.yaml", "server:\n\tworkers: 2\n");
    load_fails(state,
        "policies.yaml:2:1: server: YAML syntax error: found character that cannot start any token"
        " (while scanning for the next token at line 2, column 1)",
        NULL);
}

static void test_yaml_unsupported(void **state)
{
    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml",
        "retry: &r\n"
        "  max_attempts: 2\n"
        "models:\n"
        "  a: !!str 5\n"
        "  b: *r\n"
        "  c: [x]\n");
    load_fails(state,
        "policies.yaml:1:8: retry: YAML anchors (&r) are not supported",
        "policies.yaml:4:6: models.a: YAML tags (tag:yaml.org,2002:str) are not supported",
        "policies.yaml:5:6: models.b: YAML aliases (*r) are not supported",
        NULL);
}

static void test_yaml_core_schema(void **state)
{
    static const struct { const char *in; int type; } cases[] = {
        {"", JSON_NULL}, {"~", JSON_NULL}, {"null", JSON_NULL}, {"NULL", JSON_NULL},
        {"true", JSON_TRUE}, {"False", JSON_FALSE}, {"yes", JSON_STRING}, {"on", JSON_STRING},
        {"12", JSON_INTEGER}, {"-3", JSON_INTEGER}, {"+4", JSON_INTEGER}, {"0x1F", JSON_INTEGER},
        {"0o17", JSON_INTEGER}, {"0x", JSON_STRING}, {"1.5", JSON_REAL}, {".5", JSON_REAL},
        {"1e3", JSON_REAL}, {"1.", JSON_REAL}, {"1e", JSON_STRING}, {".", JSON_STRING},
        {"250ms", JSON_STRING}, {"1:30", JSON_STRING}, {"nil", JSON_STRING}, {"-", JSON_STRING},
        {"99999999999999999999", JSON_REAL},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *v = doc_yaml_scalar(cases[i].in, strlen(cases[i].in));
        assert_non_null(v);
        if ((int)json_typeof(v) != cases[i].type)
            print_message("scalar \"%s\": type %d, want %d\n", cases[i].in, json_typeof(v), cases[i].type);
        assert_int_equal(json_typeof(v), cases[i].type);
        json_decref(v);
    }
    {
        json_t *v = doc_yaml_scalar("0x1F", 4);
        assert_int_equal(json_integer_value(v), 31);
        json_decref(v);
        v = doc_yaml_scalar("0o17", 4);
        assert_int_equal(json_integer_value(v), 15);
        json_decref(v);
    }
}

static void test_yaml_tree_and_positions(void **state)
{
    static const char text[] =
        "a:\n"
        "  b: [1, \"2\", true]\n"
        "  'c': null\n"
        "d:\n"
        "  - x: y\n"
        "  - plain text\n";
    struct doc d;
    json_t *a, *b, *dl;
    struct doc_pos p;

    (void)state;
    memset(&d, 0, sizeof(d));
    assert_int_equal(doc_parse_yaml(&d, text, strlen(text)), 0);
    assert_int_equal(d.nerrs, 0);
    assert_true(d.yaml);
    a = json_object_get(d.root, "a");
    b = json_object_get(a, "b");
    assert_true(json_is_integer(json_array_get(b, 0)));
    assert_true(json_is_string(json_array_get(b, 1)));
    assert_true(json_is_true(json_array_get(b, 2)));
    assert_true(json_is_null(json_object_get(a, "c")));
    p = doc_pos(&d, d.root);
    assert_int_equal(p.line, 1);
    assert_int_equal(p.col, 1);
    p = doc_pos(&d, a);
    assert_int_equal(p.line, 2);
    assert_int_equal(p.col, 3);
    p = doc_key_pos(&d, a, "b");
    assert_int_equal(p.line, 2);
    assert_int_equal(p.col, 3);
    p = doc_elem_pos(&d, b, 2);                     /* true: a singleton */
    assert_int_equal(p.line, 2);
    assert_int_equal(p.col, 15);
    p = doc_member_pos(&d, a, "c");                 /* null */
    assert_int_equal(p.line, 3);
    assert_int_equal(p.col, 8);
    assert_int_equal(doc_flags(&d, json_array_get(b, 1)), 0);   /* quoted */
    dl = json_object_get(d.root, "d");
    assert_int_equal(doc_flags(&d, json_array_get(dl, 1)), DOC_PLAIN);
    p = doc_pos(&d, json_array_get(dl, 1));
    assert_int_equal(p.line, 6);
    assert_int_equal(p.col, 5);
    p = doc_pos(&d, json_array_get(dl, 0));
    assert_int_equal(p.line, 5);
    assert_int_equal(p.col, 5);
    doc_free(&d);
    assert_null(d.root);

    /* a comment-only stream has no root */
    assert_int_equal(doc_parse_yaml(&d, "# c\n", 4), 0);
    assert_null(d.root);
    doc_free(&d);
}

/* ---- JSON specifics ---------------------------------------------------- */

static void test_json_syntax_errors(void **state)
{
    static const struct { const char *text, *want; } cases[] = {
        {"{\"hosts\": [\"asia\" \"hyperliquid\"]}",
         "hosts.json:1:19: hosts: expected ',' or ']' after an array element, found '\"'"},
        {"{\"hosts\": [\"asia\",\n   \"hyper]}\n",
         "hosts.json:2:12: hosts[1]: unterminated string (newline inside a string)"},
        {"", "hosts.json:1:1: $: empty file, expected a JSON object"},
        {"  \n", "hosts.json:2:1: $: empty file, expected a JSON object"},
        {"{\"hosts\": [\"asia\"]} x", "hosts.json:1:21: $: unexpected 'x' after the end of the JSON document"},
        {"{\"hosts\": [\"asia\"], }", "hosts.json:1:21: $: trailing comma before '}'"},
        {"{hosts: []}", "hosts.json:1:2: $: expected a string key, found 'h'"},
        {"{\"hosts\" []}", "hosts.json:1:10: $: expected ':' after the key, found '['"},
        {"{\"hosts\": [tru]}", "hosts.json:1:12: hosts[0]: expected a value, found 't'"},
        {"{\"hosts\": [01]}", "hosts.json:1:13: hosts: expected ',' or ']' after an array element, found '1'"},
        {"{\"hosts\": [1.]}", "hosts.json:1:14: hosts[0]: invalid number"},
        {"{\"hosts\": [99999999999999999999]}", "hosts.json:1:12: hosts[0]: integer out of range"},
        {"{\"hosts\": [\"a\\qb\"]}", "hosts.json:1:14: hosts[0]: invalid escape in a string"},
        {"{\"hosts\": [\"\\ud800\"]}", "hosts.json:1:13: hosts[0]: invalid \\u escape (lone high surrogate)"},
        {"{\"hosts\": [\"\\u0000\"]}", "hosts.json:1:13: hosts[0]: \\u0000 is not allowed in a string"},
        {"{\"hosts\": [\"a\tb\"]}", "hosts.json:1:14: hosts[0]: control character 0x09 in a string (escape it)"},
        {"{\"hosts\": [\"\xc3\x28\"]}", "hosts.json:1:13: hosts[0]: invalid UTF-8 in a string"},
        {"{\"h\xc3\xa9\": 1, \"hosts\": [\"\xc3\xa9\", x]}",
         "hosts.json:1:26: hosts[1]: expected a value, found 'x'"},      /* columns count characters */
        {"{\"hosts\": {\"a\": [", "hosts.json:1:18: hosts.a[0]: unexpected end of file, expected a value"},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        put(state, "hosts.json", cases[i].text);
        load_fails(state, cases[i].want, NULL);
    }
}

static void test_json_tree_and_positions(void **state)
{
    static const char text[] =
        "\xEF\xBB\xBF{\"a\": [true, null, 1.5e2, -7, \"s\\u00e9\\ud83d\\ude00\"],\n"
        " \"b\": {\"c\": false}}";
    char deep[200];
    struct doc d;
    json_t *a;
    struct doc_pos p;
    size_t i;

    (void)state;
    memset(&d, 0, sizeof(d));
    assert_int_equal(doc_parse_json(&d, text, strlen(text)), 0);
    assert_int_equal(d.nerrs, 0);
    assert_false(d.yaml);
    a = json_object_get(d.root, "a");
    assert_true(json_is_true(json_array_get(a, 0)));
    assert_true(json_is_null(json_array_get(a, 1)));
    assert_true(json_real_value(json_array_get(a, 2)) == 150.0);
    assert_int_equal(json_integer_value(json_array_get(a, 3)), -7);
    assert_string_equal(json_string_value(json_array_get(a, 4)), "s\xc3\xa9\xf0\x9f\x98\x80");
    p = doc_elem_pos(&d, a, 1);                    /* null: a singleton */
    assert_int_equal(p.line, 1);
    assert_int_equal(p.col, 14);                    /* the BOM is not a column */
    p = doc_pos(&d, json_array_get(a, 3));
    assert_int_equal(p.col, 27);
    p = doc_member_pos(&d, json_object_get(d.root, "b"), "c");
    assert_int_equal(p.line, 2);
    assert_int_equal(p.col, 13);
    p = doc_key_pos(&d, d.root, "b");
    assert_int_equal(p.line, 2);
    assert_int_equal(p.col, 2);
    p = doc_pos(&d, json_object_get(d.root, "nope"));
    assert_int_equal(p.line, 0);
    doc_free(&d);

    /* nesting is bounded */
    for (i = 0; i < sizeof(deep) - 1; i++)
        deep[i] = '[';
    deep[sizeof(deep) - 1] = '\0';
    assert_int_equal(doc_parse_json(&d, deep, strlen(deep)), -1);
    assert_null(d.root);
    assert_int_equal(d.nerrs, 1);
    assert_string_equal(d.errs[0].msg, "nesting deeper than 64 levels");
    assert_int_equal(d.errs[0].pos.col, 65);
    doc_free(&d);
}

/* Each string gets a buffer of its own source length (not of the rest of
 * the input): strings that decode to their full span, escaped quotes and
 * backslashes, and strings cut by the end of the input, on exact-size
 * copies so that ASan sees any byte past either buffer. */
static void test_json_string_bounds(void **state)
{
    static const struct { const char *text; int ok; const char *want; } cases[] = {
        {"{\"a\": \"\"}", 1, ""},
        {"{\"a\": \"x\"}", 1, "x"},
        {"{\"a\": \"\\\"\\\\\"}", 1, "\"\\"},
        {"{\"a\": \"q\\\"\\\"\\u00e9\"}", 1, "q\"\"\xc3\xa9"},
        {"{\"a\": \"\\ud83d\\ude00\"}", 1, "\xf0\x9f\x98\x80"},
        {"{\"a\": \"abc", 0, NULL},
        {"{\"a\": \"abc\\", 0, NULL},
        {"{\"a\": \"abc\\\"", 0, NULL},
        {"{\"a\": \"ab\\u00", 0, NULL},
        {"{\"a\": \"ab\\\nc\"}", 0, NULL},
        {"{\"", 0, NULL},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = strlen(cases[i].text);
        char *copy = malloc(len);
        struct doc d;

        assert_non_null(copy);
        memcpy(copy, cases[i].text, len);
        memset(&d, 0, sizeof(d));
        assert_int_equal(doc_parse_json(&d, copy, len), cases[i].ok ? 0 : -1);
        if (cases[i].ok)
            assert_string_equal(json_string_value(json_object_get(d.root, "a")), cases[i].want);
        else
            assert_true(d.nerrs > 0);
        doc_free(&d);
        free(copy);
    }
}

static void test_doc_paths(void **state)
{
    char buf[64];

    (void)state;
    doc_path_key(buf, sizeof(buf), "", "retry");
    assert_string_equal(buf, "retry");
    doc_path_key(buf, sizeof(buf), "retry", "backoff");
    assert_string_equal(buf, "retry.backoff");
    doc_path_key(buf, sizeof(buf), "models", "llama-3.1");
    assert_string_equal(buf, "models[\"llama-3.1\"]");
    doc_path_key(buf, sizeof(buf), "x", "a\"b");
    assert_string_equal(buf, "x[\"a\\\"b\"]");
    doc_path_index(buf, sizeof(buf), "hosts", 12);
    assert_string_equal(buf, "hosts[12]");
    doc_path_index(buf, 8, "hosts", 12345);
    assert_string_equal(buf, "hosts[1");
}

/* ---- durations and sizes ----------------------------------------------- */

static void test_parse_duration(void **state)
{
    static const struct { const char *in; int64_t ms; } cases[] = {
        {"250ms", 250}, {"2s", 2000}, {"5m", 300000}, {"1h", 3600000}, {"30", 30000},
        {"0.5", 500}, {"0", 0}, {"1.5s", 1500}, {"0.1s", 100}, {"1.5ms", 2}, {"0.25h", 900000},
        {"999999999999", 999999999999000LL},
        {"", -1}, {"s", -1}, {"1d", -1}, {"-1s", -1}, {"1.s", -1}, {".5s", -1}, {"1 s", -1},
        {"1S", -1}, {"1msx", -1}, {"1e3", -1}, {"1000000000000", -1},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (config_parse_duration(cases[i].in) != cases[i].ms)
            print_message("duration \"%s\"\n", cases[i].in);
        assert_int_equal(config_parse_duration(cases[i].in), cases[i].ms);
    }
    assert_int_equal(config_parse_duration(NULL), -1);
}

static void test_parse_size(void **state)
{
    static const struct { const char *in; int64_t n; } cases[] = {
        {"0", 0}, {"100", 100}, {"100B", 100}, {"64K", 65536}, {"64KB", 65536}, {"1M", 1048576},
        {"1MB", 1048576}, {"1G", 1073741824LL}, {"2GB", 2147483648LL},
        {"", -1}, {"KB", -1}, {"1kb", -1}, {"1.5MB", -1}, {"-1", -1}, {"1TB", -1}, {"1 MB", -1},
        {"99999999999999GB", -1},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (config_parse_size(cases[i].in) != cases[i].n)
            print_message("size \"%s\"\n", cases[i].in);
        assert_int_equal(config_parse_size(cases[i].in), cases[i].n);
    }
    assert_int_equal(config_parse_size(NULL), -1);
}

static void test_yaml_numbers_as_durations(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    put(state, "policies.yaml",
        "server: {client_timeout: 2, drain_timeout: 0.25, max_body_bytes: 2048}\n"
        "retry: {deadline: \"90\"}\n");
    c = load_ok(state);
    assert_int_equal(c->server.client_timeout_ms, 2000);
    assert_int_equal(c->server.drain_timeout_ms, 250);
    assert_int_equal(c->server.max_body_bytes, 2048);
    assert_int_equal(c->retry.deadline_ms, 90000);
    config_unref(c);
}

/* ---- the snapshot's life ----------------------------------------------- */

static void test_ref_unref_and_strategy_names(void **state)
{
    struct config *c;

    put(state, "hosts.json", GAIA_HOSTS);
    c = load_ok(state);
    config_ref(c);
    assert_int_equal(c->refcnt, 2);
    config_unref(c);
    assert_int_equal(c->refcnt, 1);
    config_unref(c);                 /* freed: ASan would see a leak otherwise */
    config_unref(NULL);

    assert_string_equal(config_strategy_name(STRAT_ROUND_ROBIN), "round-robin");
    assert_string_equal(config_strategy_name(STRAT_WEIGHTED_ROUND_ROBIN), "weighted-round-robin");
    assert_string_equal(config_strategy_name(STRAT_LEAST_CONNECTIONS), "least-connections");
    assert_string_equal(config_strategy_name(STRAT_LATENCY), "latency");
    assert_string_equal(config_strategy_name(STRAT_LEAST_PENDING), "least-pending");
    assert_string_equal(config_strategy_name(STRAT_RANDOM), "random");
    assert_string_equal(config_strategy_name(STRAT_CONSISTENT_HASH), "consistent-hash");
}

static void test_errors_append_and_null(void **state)
{
    struct cfg_errors e = {NULL, 0};

    put(state, "hosts.json", "[");
    assert_null(config_load(D(state), &e));
    assert_int_equal(e.n, 1);
    assert_null(config_load(D(state), &e));   /* appends */
    assert_int_equal(e.n, 2);
    cfg_errors_free(&e);
    assert_int_equal(e.n, 0);
    assert_null(e.msg);
    assert_null(config_load(D(state), NULL)); /* errors not wanted */
}

static void test_check_main(void **state)
{
    char *buf = NULL, want[512];
    size_t len = 0;
    FILE *out;

    put(state, "hosts.json", GAIA_HOSTS);
    out = open_memstream(&buf, &len);
    assert_non_null(out);
    assert_int_equal(config_check_main(D(state), out), 0);
    fclose(out);
    assert_string_equal(buf, "configuration ok\n");
    free(buf);

    put(state, "policies.yaml", "retry:\n  max_attempts: 0\nsessions: {store: disk}\n");
    out = open_memstream(&buf, &len);
    assert_non_null(out);
    assert_int_equal(config_check_main(D(state), out), 1);
    fclose(out);
    snprintf(want, sizeof(want),
             "%s/policies.yaml:2:17: retry.max_attempts: must be between 1 and 20\n"
             "%s/policies.yaml:3:19: sessions.store: unknown value \"disk\", expected one of: memory, redis\n",
             D(state), D(state));
    assert_string_equal(buf, want);
    free(buf);
}

static void test_dir_with_trailing_slash(void **state)
{
    struct cfg_errors e = {NULL, 0};
    char dir[128], want[256];

    put(state, "hosts.json", "{}");
    snprintf(dir, sizeof(dir), "%s/", D(state));
    assert_null(config_load(dir, &e));
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "%s/hosts.json:1:1: hosts: missing required key", D(state));
    assert_string_equal(e.msg[0], want);
    cfg_errors_free(&e);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_gaia_files),
        T(test_gaia_hosts_only),
        T(test_host_object_every_field),
        T(test_host_urls_and_template),
        T(test_host_bare_ports),
        T(test_host_errors),
        T(test_hosts_root_shapes),
        T(test_missing_hosts_file),
        T(test_defaults),
        T(test_policies_full),
        T(test_access_log_forms),
        T(test_several_errors_at_once),
        T(test_did_you_mean),
        T(test_types_and_ranges),
        T(test_cross_field_checks),
        T(test_health_timeout_over_interval),
        T(test_root_shapes),
        T(test_env_interpolation),
        T(test_env_unset),
        T(test_key_file),
        T(test_key_fields_and_errors),
        T(test_fingerprints),
        T(test_key_usable),
        T(test_pool_and_host_refs),
        T(test_duplicates),
        T(test_key_unknown_names),
        T(test_secrets_never_in_errors),
        T(test_secrets_in_misshapen_files),
        T(test_retry_on),
        T(test_affinity),
        T(test_models),
        T(test_fallback_errors),
        T(test_notifications),
        T(test_yaml_syntax_error),
        T(test_yaml_unsupported),
        T(test_yaml_core_schema),
        T(test_yaml_tree_and_positions),
        T(test_json_syntax_errors),
        T(test_json_tree_and_positions),
        T(test_json_string_bounds),
        T(test_doc_paths),
        T(test_parse_duration),
        T(test_parse_size),
        T(test_yaml_numbers_as_durations),
        T(test_ref_unref_and_strategy_names),
        T(test_errors_append_and_null),
        T(test_check_main),
        T(test_dir_with_trailing_slash),
    };

    config_check_init();    /* server.tls and sessions.redis checks */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
