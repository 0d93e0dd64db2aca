# tests/fuzz/fuzz.mk -- libFuzzer harnesses (included by the Makefile).
#
#   make fuzz                 each harness for FUZZ_TIME seconds (default 60)
#   make fuzz FUZZ_TIME=600   longer
#   make fuzz-build           only build them (build/fuzz/)
#
# Needs clang and Debian's libFuzzer (apt-get install clang-14 libfuzzer-14-dev).
# Each run starts from the saved corpus tests/fuzz/corpus/NAME/ (read-only)
# and keeps what it finds in build/fuzz/corpus/NAME/; a crash leaves
# build/fuzz/crash-* and fails the target. To keep a new input, copy it
# into tests/fuzz/corpus/NAME/ (`make test` replays that directory through
# the same harness built without libFuzzer: tests/fuzz/replay.c).

FUZZ_CC    ?= $(shell command -v clang-14 2>/dev/null || command -v clang 2>/dev/null || echo clang)
FUZZ_TIME  ?= 60
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O1 -g \
              -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer $(IQUOTE)
FUZZ_LIBS   = $(shell pkg-config --cflags --libs libevent libevent_pthreads libevent_openssl openssl libcurl jansson yaml-0.1 hiredis) -lm -lpthread
FUZZERS    := fuzz_config fuzz_request fuzz_jscan
# Every gateway source but main.c, instrumented: the harnesses call a few
# modules, which call others.
FUZZ_SRC   := $(LIBSRC)

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZERS:%=build/fuzz/%)

build/fuzz/%: tests/fuzz/%.c $(LIBSRC) $(HDR)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $< $(FUZZ_SRC) $(FUZZ_LIBS) -o $@

fuzz: fuzz-build
	@set -e; for f in $(FUZZERS); do \
		mkdir -p build/fuzz/corpus/$$f; \
		echo "== $$f: $(FUZZ_TIME) s"; \
		ASAN_OPTIONS=detect_leaks=1 build/fuzz/$$f -max_total_time=$(FUZZ_TIME) \
			-max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=build/fuzz/ \
			build/fuzz/corpus/$$f tests/fuzz/corpus/$$f; \
	done
