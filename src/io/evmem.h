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

#endif
