#!/bin/sh
# Turns a text file (web/dashboard.html) into a C string the binary serves:
#   scripts/embed-page.sh web/dashboard.html > src/app/dashboard_page.c
# Backslashes, quotes and '?' (trigraphs) are escaped; each line becomes
# one string literal ending in \n. `make` reruns it when the page changes.
set -eu
printf '/* Generated from %s by scripts/embed-page.sh: edit that file, not this one. */\n' "$1"
printf '#include <stddef.h>\n\nconst char dashboard_page[] =\n'
sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/?/\\?/g' -e 's/^/"/' -e 's/$/\\n"/' "$1"
printf ';\nconst size_t dashboard_page_len = sizeof(dashboard_page) - 1;\n'
