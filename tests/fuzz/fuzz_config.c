/*
 * fuzz_config.c -- libFuzzer harness for the configuration loader: the
 * position-keeping JSON and YAML parsers (src/config/doc.c) and config_load()
 * (src/config/config.c) on all three files.
 *
 * The first byte picks what the rest of the input becomes:
 *   0  hosts.json       (the other two files valid)
 *   1  api-keys.json    (hosts.json valid, policies.yaml valid)
 *   2  policies.yaml    (hosts.json valid, no api-keys.json)
 *   3  all three, separated by NUL bytes: hosts.json \0 api-keys.json \0
 *      policies.yaml (a missing part is a missing file)
 * and whatever it picked, the bytes also go straight through
 * doc_parse_json() and doc_parse_yaml(). The files are written to a
 * private temporary directory, removed at exit.
 *
 * Built with clang -fsanitize=fuzzer (make fuzz) or with tests/fuzz/replay.c
 * as main() to replay tests/fuzz/corpus/fuzz_config/ in the test suite.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "config_check.h"
#include "doc.h"

#define MAX_INPUT (1024 * 1024)

static char dir[] = "/tmp/infergate-fuzz-config-XXXXXX";
static int ready;

static const char hosts_ok[] =
    "{\"hosts\": [{\"name\": \"a\", \"url\": \"http://127.0.0.1:9\", \"models\": [\"m\"]},"
    " \"http://127.0.0.1:10\"]}\n";
static const char keys_ok[] =
    "{\"apiKeys\": [{\"key\": \"sk-fuzz-0000000000000001\", \"description\": \"one\","
    " \"isActive\": true}]}\n";
static const char policies_ok[] =
    "retry:\n  max_attempts: 2\nadmin:\n  token: fuzz-admin-token\n";

static const char *names[3] = { "hosts.json", "api-keys.json", "policies.yaml" };

static void cleanup(void)
{
    char path[sizeof(dir) + 32];
    int i;

    for (i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Writes (or, for data NULL, removes) one of the three files. */
static void put(int which, const uint8_t *data, size_t len)
{
    char path[sizeof(dir) + 32];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, names[which]);
    if (data == NULL) {
        unlink(path);
        return;
    }
    if ((f = fopen(path, "wb")) == NULL)
        abort();
    if (len && fwrite(data, 1, len, f) != len)
        abort();
    fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (mkdtemp(dir) == NULL)
        abort();
    atexit(cleanup);
    /* A key_file naming /dev/stdin must not wait for a terminal. */
    if (freopen("/dev/null", "r", stdin) == NULL)
        abort();
    config_check_init();    /* server.tls and sessions.redis too */
    ready = 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cfg_errors errs = { NULL, 0 };
    struct config *cfg;
    struct doc d;
    const uint8_t *p;
    size_t n;

    if (!ready)
        LLVMFuzzerInitialize(NULL, NULL);
    if (size == 0 || size > MAX_INPUT)
        return 0;
    p = data + 1;
    n = size - 1;

    memset(&d, 0, sizeof(d));
    doc_parse_json(&d, (const char *)p, n);
    doc_free(&d);
    memset(&d, 0, sizeof(d));
    doc_parse_yaml(&d, (const char *)p, n);
    doc_free(&d);

    switch (data[0] & 3) {
    case 0:
        put(0, p, n);
        put(1, (const uint8_t *)keys_ok, strlen(keys_ok));
        put(2, (const uint8_t *)policies_ok, strlen(policies_ok));
        break;
    case 1:
        put(0, (const uint8_t *)hosts_ok, strlen(hosts_ok));
        put(1, p, n);
        put(2, (const uint8_t *)policies_ok, strlen(policies_ok));
        break;
    case 2:
        put(0, (const uint8_t *)hosts_ok, strlen(hosts_ok));
        put(1, NULL, 0);
        put(2, p, n);
        break;
    default: {
        const uint8_t *part = p, *end = p + n;
        int i;
        for (i = 0; i < 3; i++) {
            const uint8_t *z = part ? memchr(part, 0, (size_t)(end - part)) : NULL;
            if (part == NULL) {
                put(i, NULL, 0);
                continue;
            }
            put(i, part, (size_t)((z ? z : end) - part));
            part = z ? z + 1 : NULL;
        }
        break;
    }
    }
    cfg = config_load(dir, &errs);
    if (cfg)
        config_unref(cfg);
    cfg_errors_free(&errs);
    return 0;
}
