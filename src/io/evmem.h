/* evmem.h: libevent's memory through per-thread lists of its large blocks
 * (see evmem.c). */
#ifndef INFERGATE_EVMEM_H
#define INFERGATE_EVMEM_H

/* Routes libevent's allocations through evmem.c. Call once, before any
 * other libevent call (event_set_mem_functions' rule). */
void evmem_init(void);

/* Frees the calling thread's kept blocks: main() at exit, after the last
 * libevent call. */
void evmem_release(void);

/* A block of at least size bytes for the gateway's own short-lived
 * memory (a request's block, a transfer's), from the calling thread's
 * lists (the size rounded up to a power of two from 2 KB to 32 KB);
 * freed with evmem_block_free() only, on any thread. Works without
 * evmem_init() (tests). */
void *evmem_block(size_t size);
void evmem_block_free(void *p);

#endif
