/* Re-runs every shape of a GEMM census (scripts/gemm_census.c) alone, on one thread, with
 * OpenBLAS single-threaded as moe-tune calls it, and appends the best time of a few runs
 * (operands allocated once per shape and warm: a best case, which is what a bound wants):
 *   transA transB m n k beta calls seconds_in_step best_seconds_alone
 * and, last, `peak GFLOPS` where GFLOPS is the best one-thread rate of a 2048^3 product taken
 * before, in the middle of and after the shapes (the host's speed drifts; the fractions of
 * scripts/gemm_bound.sh are taken against this figure from the same process).
 *   gcc -O2 scripts/gemm_replay.c -o /tmp/gemm_replay $(pkg-config --cflags --libs openblas)
 *   /tmp/gemm_replay /tmp/census.txt > /tmp/replay.txt */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static float *pa, *pb, *pc;
static double peak = 0;
static void measure_peak(void) {
    const int n = 2048;
    if (!pa) {
        pa = malloc(sizeof(float) * n * n); pb = malloc(sizeof(float) * n * n); pc = malloc(sizeof(float) * n * n);
        if (!pa || !pb || !pc) { fprintf(stderr, "out of memory\n"); exit(1); }
        for (long i = 0; i < (long)n * n; i++) { pa[i] = (float)(i % 7) * 0.1f; pb[i] = (float)(i % 5) * 0.1f; }
    }
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.f, pa, n, pb, n, 0.f, pc, n);
        double g = 2.0 * n * n * n / (now() - t0) / 1e9;
        if (g > peak) peak = g;
    }
}
int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: gemm_replay CENSUS.txt\n"); return 2; }
    FILE *f = fopen(argv[1], "r");
    if (!f) { perror(argv[1]); return 2; }
    openblas_set_num_threads(1);
    measure_peak();
    int ta, tb, m, n, k, line = 0; float beta; long cnt; double s;
    while (fscanf(f, "%d %d %d %d %d %g %ld %lf", &ta, &tb, &m, &n, &k, &beta, &cnt, &s) == 8) {
        long lda = ta == CblasNoTrans ? k : m, ldb = tb == CblasNoTrans ? n : k;
        float *a = malloc(sizeof(float) * ((long)m * k + 16)), *b = malloc(sizeof(float) * ((long)k * n + 16)),
              *c = malloc(sizeof(float) * ((long)m * n + 16));
        if (!a || !b || !c) { fprintf(stderr, "out of memory at %d %d %d\n", m, n, k); return 1; }
        for (long i = 0; i < (long)m * k; i++) a[i] = (float)(i % 7) * 0.1f;
        for (long i = 0; i < (long)k * n; i++) b[i] = (float)(i % 5) * 0.1f;
        for (long i = 0; i < (long)m * n; i++) c[i] = 0;
        double best = 1e30;
        int reps = 2.0 * m * n * k < 1e8 ? 20 : 5;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.f, a, lda, b, ldb, beta, c, n);
            double dt = now() - t0;
            if (dt < best) best = dt;
        }
        printf("%d %d %d %d %d %g %ld %.6f %.6f\n", ta, tb, m, n, k, beta, cnt, s, best);
        free(a); free(b); free(c);
        if (++line % 500 == 0) measure_peak();
    }
    measure_peak();
    printf("peak %.2f\n", peak);
    return 0;
}
