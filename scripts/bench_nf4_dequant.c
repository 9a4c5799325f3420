// Times the NF4 dequantization kernels of Sources/CKernels/nf4.c on one thread:
//   clang -O3 -ISources/CKernels/include scripts/bench_nf4_dequant.c Sources/CKernels/nf4.c -o /tmp/bnf4 && /tmp/bnf4
// A 512 x 1024 weight (bench-small's expert), double-quantized scales, dequantized 200 times
// per kernel in chunks of 64Ki values into one L2-sized buffer (as ChunkedMatmul does),
// kernels alternating over 5 rounds; prints the best thread-CPU ns per value of each.
#include "ckernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(void) {
    const long n = 512L * 1024, blocks = n / 64;
    unsigned char *packed = malloc(n / 2), *codes = malloc(blocks);
    float *dst = malloc(65536 * sizeof(float)), code[16], map[256], nested[64];
    for (long i = 0; i < n / 2; i++) packed[i] = (unsigned char)rand();
    for (long b = 0; b < blocks; b++) codes[b] = (unsigned char)rand();
    for (int i = 0; i < 16; i++) code[i] = -1.0f + i / 7.5f;
    for (int i = 0; i < 256; i++) map[i] = (i - 128) / 128.0f;
    for (int i = 0; i < 64; i++) nested[i] = 0.01f + i * 1e-4f;
    const char *names[3] = {"scalar", "avx2", "avx512"};
    double best[3] = {1e9, 1e9, 1e9};
    for (int round = 0; round < 5; round++)
        for (int k = 0; k < 3; k++) {
            if (!mt_nf4_kernel_supported(k)) continue;
            double t0 = now();
            for (int r = 0; r < 200; r++)
                for (long lo = 0; lo < n; lo += 65536)
                    mt_nf4_dequant_with(k, dst, packed, lo, lo + 65536, code, NULL, codes, map, nested, 0.001f);
            double ns = (now() - t0) / (200.0 * n) * 1e9;
            if (ns < best[k]) best[k] = ns;
        }
    for (int k = 0; k < 3; k++)
        if (mt_nf4_kernel_supported(k)) printf("%s: %.3f ns/value (%.1f GB/s of fp32 written)\n", names[k], best[k], 4.0 / best[k]);
    return 0;
}
