// Memory read bandwidth with T threads (1 or 2; the decoder's figures are set beside it): each
// thread sums its own 512 MB buffer 5 times with AVX2 loads.
//   gcc -O2 -pthread scripts/membw.c -o /tmp/membw && /tmp/membw 1 && /tmp/membw 2
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BYTES (512L << 20)
#define ROUNDS 5

static char *buffers[2];
static volatile long long sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx2"))) static void *sum(void *arg) {
    const __m256i *p = (const __m256i *)buffers[(long)arg];
    __m256i acc = _mm256_setzero_si256();
    for (int r = 0; r < ROUNDS; r++)
        for (long i = 0; i < BYTES / 32; i += 4)
            acc = _mm256_add_epi64(acc, _mm256_add_epi64(_mm256_add_epi64(p[i], p[i + 1]), _mm256_add_epi64(p[i + 2], p[i + 3])));
    sink += _mm256_extract_epi64(acc, 0);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 2) { fprintf(stderr, "membw: 1 or 2 threads\n"); return 2; }
    for (int i = 0; i < threads; i++) {
        buffers[i] = aligned_alloc(64, BYTES);
        if (!buffers[i]) { fprintf(stderr, "membw: out of memory\n"); return 1; }
        memset(buffers[i], i + 1, BYTES);
    }
    pthread_t th[2];
    double t0 = now();
    for (long i = 0; i < threads; i++) pthread_create(&th[i], NULL, sum, (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    printf("%d thread(s): %.1f GB/s read\n", threads, threads * (double)ROUNDS * BYTES / (now() - t0) / 1e9);
    return 0;
}
