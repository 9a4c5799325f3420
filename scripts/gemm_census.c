/* GEMM census: LD_PRELOAD shim that counts and times every cblas_sgemm call of a run by
 * (transA, transB, m, n, k, beta) and writes one line per shape at exit:
 *   transA transB m n k beta calls seconds   (CBLAS codes: 111 = NoTrans, 112 = Trans;
 *   seconds: wall time inside the calls of that shape, summed over the threads that made them)
 * Build and use (README "Speed: causal blocks in attention", "The GEMM bound"):
 *   gcc -O2 -shared -fPIC scripts/gemm_census.c -o /tmp/gemm_census.so -ldl
 *   GEMM_CENSUS_OUT=/tmp/census.txt LD_PRELOAD=/tmp/gemm_census.so \
 *     .build/release/moe-tune bench-train --model ~/bench-small --steps 1 --warmup 0
 * Only products that reach OpenBLAS are seen (not the LoRA kernel's or the packed kernel's).
 * scripts/gemm_replay.c re-runs each shape alone; scripts/gemm_bound.sh puts the two together. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef void (*fn_t)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
static fn_t real;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
#define MAXS 4096
static struct { int ta, tb, m, n, k; float beta; long cnt; double s; } tab[MAXS];
static int ns;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
void cblas_sgemm(int o, int ta, int tb, int m, int n, int k, float al, const float *a, int lda, const float *b, int ldb,
                 float be, float *c, int ldc) {
    if (!real) real = (fn_t)dlsym(RTLD_NEXT, "cblas_sgemm");
    double t0 = now();
    real(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc);
    double dt = now() - t0;
    pthread_mutex_lock(&mu);
    int i;
    for (i = 0; i < ns; i++)
        if (tab[i].ta == ta && tab[i].tb == tb && tab[i].m == m && tab[i].n == n && tab[i].k == k && tab[i].beta == be) break;
    if (i == ns && ns < MAXS) { tab[ns].ta = ta; tab[ns].tb = tb; tab[ns].m = m; tab[ns].n = n; tab[ns].k = k; tab[ns].beta = be; ns++; }
    if (i < MAXS) { tab[i].cnt++; tab[i].s += dt; }
    pthread_mutex_unlock(&mu);
}
__attribute__((destructor)) static void dump(void) {
    FILE *f = fopen(getenv("GEMM_CENSUS_OUT") ? getenv("GEMM_CENSUS_OUT") : "gemm_census.txt", "w");
    if (!f) return;
    for (int i = 0; i < ns; i++)
        fprintf(f, "%d %d %d %d %d %g %ld %.6f\n", tab[i].ta, tab[i].tb, tab[i].m, tab[i].n, tab[i].k, tab[i].beta, tab[i].cnt, tab[i].s);
    fclose(f);
}
