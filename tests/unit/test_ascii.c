/*
 * test_ascii.c -- src/config/ascii.h: ascii_lower_eq() against a plain
 * byte-by-byte ASCII case fold, for every length of the known field names
 * used with it (and a media type) and every byte value at every offset (the
 * word path must not let "\r" pass for "-", nor '@' or '[' for a letter).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "ascii.h"

static int plain(const char *s, const char *lower, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

static void test_every_byte_at_every_offset(void **state)
{
    static const char *const names[] = {
        "te", "date", "close", "server", "upgrade", "connection", "keep-alive",
        "content-type", "x-request-id", "x-ratelimit-", "content-length",
        "proxy-connection", "transfer-encoding", "proxy-authenticate",
        "text/event-stream",
    };
    char buf[32];

    (void)state;
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        size_t n = strlen(names[k]);
        memcpy(buf, names[k], n);
        assert_true(ascii_lower_eq(buf, names[k], n));
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)(buf[i] >= 'a' && buf[i] <= 'z' ? buf[i] - 32 : buf[i]);
        assert_true(ascii_lower_eq(buf, names[k], n));        /* all upper case */
        for (size_t at = 0; at < n; at++)
            for (int c = 0; c < 256; c++) {
                memcpy(buf, names[k], n);
                buf[at] = (char)c;
                if (ascii_lower_eq(buf, names[k], n) != plain(buf, names[k], n))
                    fail_msg("%s: byte 0x%02x at %zu", names[k], c, at);
            }
    }
    assert_false(ascii_lower_eq("Keep\rAlive", "keep-alive", 10));
    assert_false(ascii_lower_eq("content\rlength", "content-length", 14));
    assert_true(ascii_lower_eq("Content-LENGTH", "content-length", 14));
    assert_true(ascii_lower_eq("Text/Event-Stream; charset=utf-8", "text/event-stream", 17));
    assert_false(ascii_lower_eq("text\x0f" "event-stream", "text/event-stream", 17));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_byte_at_every_offset),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
