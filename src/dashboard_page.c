/* Generated from web/dashboard.html by scripts/embed-page.sh: edit that file, not this one. */
#include <stddef.h>

const char dashboard_page[] =
"<!doctype html><title>infergate</title><p>placeholder \"x\" \?\? \\ done\n"
;
const size_t dashboard_page_len = sizeof(dashboard_page) - 1;
