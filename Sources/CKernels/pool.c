// The worker threads of every parallel region (Swift's Parallel.run): a fixed pool of
// threads that spin briefly and then sleep between regions. A region hands out its
// iterations one at a time from an atomic counter to the caller and the workers; running
// one allocates nothing (libdispatch's apply allocated twice per call, Swift's overlay more).
#include "ckernels.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define MT_PAUSE() _mm_pause()
#else
#define MT_PAUSE() ((void)0)
#endif

// Iteration counter of the current region: (generation << 48) | (count << 24) | next index.
// Count and index come from one atomic word, so a worker that arrives late at a finished
// region sees index >= count and leaves; every index of the current region is taken once.
static _Atomic uint64_t next_item;
static _Atomic long done_items;
static _Atomic long generation;
static _Atomic int sleepers;
static _Atomic(mt_task_fn) job_fn;
static _Atomic(void *) job_ctx;
static _Atomic int job_threads;   // workers with an index below job_threads - 1 take part
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;   // one region at a time
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int started;

// Pause-loop iterations a worker spins before it sleeps (5-70 us at 4 GHz: a pause is 10-140
// cycles depending on the CPU, so the spin is longer on CPUs with a slow pause), and that a
// caller waits before it yields its core. Measured on the
// 2-core Zen 4: 2000 decodes as fast as 20000 on a quiet machine (SmolLM2 Q4_1 193-195 against
// 191-198 tokens/s, OLMoE-shaped Q4_K 47.5 against 48.3) and faster beside a build (88 against
// 65), where spinning takes the core from the thread that has the work; 300 decodes slower
// (170-179) as the workers fall asleep between a step's regions.
enum { SPIN = 2000 };

static void run_items(void) {
    for (;;) {
        uint64_t v = atomic_fetch_add_explicit(&next_item, 1, memory_order_acq_rel);
        long i = (long)(v & 0xffffff), n = (long)((v >> 24) & 0xffffff);
        if (i >= n) return;
        atomic_load_explicit(&job_fn, memory_order_acquire)(atomic_load_explicit(&job_ctx, memory_order_acquire), i);
        atomic_fetch_add_explicit(&done_items, 1, memory_order_release);
    }
}

static void *worker(void *arg) {
    const int index = (int)(long)arg;   // 0-based among the pool's threads
    long seen = 0;
    for (;;) {
        long g = atomic_load_explicit(&generation, memory_order_acquire);
        for (int s = 0; g == seen && s < SPIN; s++) {
            MT_PAUSE();
            g = atomic_load_explicit(&generation, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&wake_lock);
            atomic_fetch_add(&sleepers, 1);
            while ((g = atomic_load(&generation)) == seen) pthread_cond_wait(&wake, &wake_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&wake_lock);
        }
        seen = g;
        // A region asked for fewer threads than the pool has: the others sit it out.
        if (index < atomic_load_explicit(&job_threads, memory_order_acquire) - 1) run_items();
    }
    return 0;
}

static void start(int threads) {
    pthread_mutex_lock(&start_lock);
    static int failed;   // thread creation is not retried on every call once it failed
    for (int n = atomic_load(&started); n < threads && !failed; n++) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, worker, (void *)(long)n) != 0) failed = 1;
        else atomic_store(&started, n + 1);
        pthread_attr_destroy(&a);
    }
    pthread_mutex_unlock(&start_lock);
}

int mt_pool_run(long count, int threads, mt_task_fn fn, void *ctx) {
    if (count <= 0) return 1;
    if (threads > 1 && atomic_load(&started) < threads - 1) start(threads - 1);
    if (threads <= 1 || atomic_load(&started) == 0 || count == 1 || count >= (1L << 23) || pthread_mutex_trylock(&busy) != 0) {
        for (long i = 0; i < count; i++) fn(ctx, i);
        return 0;
    }
    atomic_store_explicit(&job_fn, fn, memory_order_relaxed);
    atomic_store_explicit(&job_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&done_items, 0, memory_order_relaxed);
    atomic_store_explicit(&job_threads, threads, memory_order_relaxed);
    long gen = atomic_load_explicit(&generation, memory_order_relaxed) + 1;
    atomic_store_explicit(&next_item, ((uint64_t)(gen & 0xffff) << 48) | ((uint64_t)count << 24), memory_order_release);
    atomic_store(&generation, gen);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&wake_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&wake_lock);
    }
    run_items();
    // Wait for the workers' last items; yield the core after a while (on a busy machine the
    // worker holding the last item may be waiting for it).
    for (long s = 0; atomic_load_explicit(&done_items, memory_order_acquire) < count; s++) {
        if (s < SPIN) MT_PAUSE(); else sched_yield();
    }
    pthread_mutex_unlock(&busy);
    return 1;
}
