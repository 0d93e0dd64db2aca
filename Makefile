# infergate -- build, test, demo, bench.
#
#   make            ./infergate and the mock upstream (release, -O2 -g)
#   make asan       the same under ASan+UBSan, in build/asan/
#   make test       Debian deps, the builds, check-layers, unit + e2e tests (release,
#                   ASan+UBSan, and TSan with two worker threads)
#   make check-layers  fails on a new cycle between modules (scripts/check-layers.py)
#   make demo       Debian deps, build, mocks + gateway from conf/, a few requests
#   make bench      wrk: direct vs nginx vs infergate on the same mocks

PKGS      := libevent libevent_pthreads libevent_openssl openssl libcurl jansson yaml-0.1 hiredis
CC        ?= cc
WARN      := -Wall -Wextra -Werror
CSTD      := -std=c11 -D_GNU_SOURCE
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread

REL_FLAGS  := -O2 -g
# INFERGATE_LOCK_CHECKS: lock_assert_held() checks the lock contract (lock.h)
ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -DINFERGATE_LOCK_CHECKS
TSAN_FLAGS := -O1 -g -fsanitize=thread -fno-omit-frame-pointer -DINFERGATE_LOCK_CHECKS

# src/ by layer (docs/internals.md): config/ (the files and their readers),
# core/ (pure logic, no I/O library), io/ (sockets, threads, upstream
# clients), app/ (the gateway: proxy, routes, admin, health, sessions);
# main.c on top. Every folder is on the quote-include path, so a file
# includes "balance.h" wherever it lives; check-layers keeps the direction.
LAYERS   := config core io app
IQUOTE   := $(LAYERS:%=-iquote src/%)
SRC      := src/main.c $(foreach l,$(LAYERS),$(wildcard src/$(l)/*.c))
HDR      := $(foreach l,$(LAYERS),$(wildcard src/$(l)/*.h))
LIBSRC   := $(filter-out src/main.c,$(SRC))
MOCKSRC  := $(wildcard tests/mock/*.c)
UNITSRC  := $(wildcard tests/unit/test_*.c)

REL_OBJ  := $(LIBSRC:src/%.c=build/release/%.o)
ASAN_OBJ := $(LIBSRC:src/%.c=build/asan/%.o)
TSAN_OBJ := $(LIBSRC:src/%.c=build/tsan/%.o)
REL_UNIT := $(UNITSRC:tests/unit/%.c=build/release/unit/%)
ASAN_UNIT:= $(UNITSRC:tests/unit/%.c=build/asan/unit/%)

PYTEST   := /usr/bin/python3 -m pytest

.PHONY: all asan tsan deps test unit e2e demo bench bench-balance clean check-layers
all: infergate build/release/infergate-mock

# The dashboard's page, built into the binary (see scripts/embed-page.sh).
src/app/dashboard_page.c: web/dashboard.html scripts/embed-page.sh
	./scripts/embed-page.sh web/dashboard.html > $@.tmp && mv $@.tmp $@

build/release/%.o: src/%.c $(HDR)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(REL_FLAGS) $(PKG_CFLAGS) $(IQUOTE) -c $< -o $@

build/asan/%.o: src/%.c $(HDR)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(ASAN_FLAGS) $(PKG_CFLAGS) $(IQUOTE) -c $< -o $@

build/tsan/%.o: src/%.c $(HDR)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(TSAN_FLAGS) $(PKG_CFLAGS) $(IQUOTE) -c $< -o $@

infergate: build/release/main.o $(REL_OBJ)
	$(CC) $(REL_FLAGS) $^ -o $@ $(PKG_LIBS)

build/asan/infergate: build/asan/main.o $(ASAN_OBJ)
	$(CC) $(ASAN_FLAGS) $^ -o $@ $(PKG_LIBS)

build/tsan/infergate: build/tsan/main.o $(TSAN_OBJ)
	$(CC) $(TSAN_FLAGS) $^ -o $@ $(PKG_LIBS)

build/release/infergate-mock: $(MOCKSRC) $(wildcard tests/mock/*.h)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(REL_FLAGS) $(PKG_CFLAGS) $(MOCKSRC) -o $@ $(PKG_LIBS)

build/asan/infergate-mock: $(MOCKSRC) $(wildcard tests/mock/*.h)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(ASAN_FLAGS) $(PKG_CFLAGS) $(MOCKSRC) -o $@ $(PKG_LIBS)

build/release/unit/%: tests/unit/%.c $(REL_OBJ) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(REL_FLAGS) $(PKG_CFLAGS) $(IQUOTE) $(filter %.c %.o,$^) -o $@ $(PKG_LIBS) -lcmocka

build/asan/unit/%: tests/unit/%.c $(ASAN_OBJ) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(ASAN_FLAGS) $(PKG_CFLAGS) $(IQUOTE) $(filter %.c %.o,$^) -o $@ $(PKG_LIBS) -lcmocka

asan: build/asan/infergate build/asan/infergate-mock

# ThreadSanitizer build of the gateway (worker threads); make test runs
# the multi-worker e2e tests on it.
tsan: build/tsan/infergate

deps:
	@./scripts/deps.sh

# The builds of make test take one job per core unless make was given -j.
TEST_JOBS = $(if $(filter -j%,$(MAKEFLAGS)),,-j$(shell nproc 2>/dev/null || echo 2))

# The unit tests are built by run-tests.sh once the e2e sessions started
# (no $(MAKE) on that line: make -n would run it).
test: deps
	@$(MAKE) --no-print-directory $(TEST_JOBS) all asan tsan
	@$(MAKE) --no-print-directory check-layers
	@PYTEST="$(PYTEST)" UNIT_TARGETS="$(REL_UNIT) $(ASAN_UNIT)" ./scripts/run-tests.sh

# No new cycle between modules, by includes and by calls (nm of the objects).
check-layers: $(REL_OBJ)
	@python3 scripts/check-layers.py build/release

demo: deps
	@$(MAKE) --no-print-directory all
	@./scripts/demo.sh

bench:
	@./scripts/deps.sh --bench
	@$(MAKE) --no-print-directory all bench-balance
	@./scripts/bench.sh

# ns per pick of each balancing strategy at 10, 1,000 and 10,000 hosts
bench-balance: build/release/bench_balance
	@./build/release/bench_balance

build/release/bench_balance: tests/bench/bench_balance.c src/core/balance.c $(HDR)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) -O2 -g $(IQUOTE) tests/bench/bench_balance.c src/core/balance.c -o $@ -lm

clean:
	rm -rf build infergate

# --- install, deb -----------------------------------------------------------
# make install [DESTDIR=/staging] [PREFIX=/usr/local] [SYSCONFDIR=/etc]
#   $(SBINDIR)/infergate, $(MANDIR)/man8/infergate.8, $(DATADIR)/infergate/schemas/,
#   $(SYSCONFDIR)/infergate/{hosts.json,api-keys.json,policies.yaml} (examples from
#   conf/, only where no such file exists yet), the systemd unit and the logrotate file.
# make deb: build/deb/infergate_<version>_<arch>.deb (dpkg-buildpackage, see
#   packaging/debian/); scripts/package-test.sh also installs and purges it.
PREFIX         ?= /usr/local
SBINDIR        ?= $(PREFIX)/sbin
DATADIR        ?= $(PREFIX)/share
MANDIR         ?= $(DATADIR)/man
SYSCONFDIR     ?= /etc
SYSTEMDUNITDIR ?= /lib/systemd/system
INSTALL        ?= install

.PHONY: install deb
install: infergate
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(DATADIR)/infergate/schemas $(DESTDIR)$(SYSCONFDIR)/infergate \
		$(DESTDIR)$(SYSCONFDIR)/logrotate.d $(DESTDIR)$(SYSTEMDUNITDIR)
	$(INSTALL) -m 0755 infergate $(DESTDIR)$(SBINDIR)/infergate
	$(INSTALL) -m 0644 packaging/infergate.8 $(DESTDIR)$(MANDIR)/man8/infergate.8
	$(INSTALL) -m 0644 schemas/*.schema.json $(DESTDIR)$(DATADIR)/infergate/schemas/
	for f in hosts.json api-keys.json policies.yaml; do \
		[ -e $(DESTDIR)$(SYSCONFDIR)/infergate/$$f ] || \
		$(INSTALL) -m 0644 conf/$$f $(DESTDIR)$(SYSCONFDIR)/infergate/$$f || exit 1; \
	done
	$(INSTALL) -m 0644 packaging/debian/infergate.logrotate $(DESTDIR)$(SYSCONFDIR)/logrotate.d/infergate
	sed 's|/usr/sbin/infergate|$(SBINDIR)/infergate|g; s|/etc/infergate|$(SYSCONFDIR)/infergate|g' \
		packaging/debian/infergate.service > $(DESTDIR)$(SYSTEMDUNITDIR)/infergate.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/infergate.service

deb:
	@./scripts/package-test.sh --build-only

# make fuzz   libFuzzer harnesses, FUZZ_TIME seconds each (default 60); see tests/fuzz/fuzz.mk
-include tests/fuzz/fuzz.mk
