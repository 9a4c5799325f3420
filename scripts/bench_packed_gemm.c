// Pre-packed frozen weight (Sources/CKernels/packed_gemm.c) against OpenBLAS sgemm on the
// training step's shapes, forward y = x · W^T and backward dx = dy · W (W [N, K] as stored):
//   clang -O3 -ISources/CKernels/include $(pkg-config --cflags openblas) scripts/bench_packed_gemm.c \
//     Sources/CKernels/packed_gemm.c $(pkg-config --libs openblas) -lpthread -o /tmp/bpg && /tmp/bpg
// OpenBLAS single-threaded (as moe-tune calls it). 1T: one thread, thread-CPU time. 2T: two
// threads, each the half of the rows of one product (moe-tune's split, for M = 1024) or each a
// whole product of its own (expert tasks, M <= 256); wall time, GFLOP/s of both together.
// Each figure: best of 5 alternating rounds. Checks the results agree (max |diff| / max |y|).
#include "ckernels.h"
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double wall(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

typedef struct {
    int packed, backward;
    long m, n, k;      // C[m, n] = A[m, k] op(B); forward: n = out, k = in; backward: n = in, k = out
    const float *a, *w, *pk;
    float *c;
    int reps;
} Job;

static void run1(const Job *j) {
    for (int r = 0; r < j->reps; r++) {
        if (j->packed) mt_packed_gemm(j->m, j->n, j->k, j->a, j->k, j->pk, j->c, j->n, 0);
        else if (!j->backward)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->m, j->n, j->k, 1, j->a, j->k, j->w, j->k, 0, j->c, j->n);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->m, j->n, j->k, 1, j->a, j->k, j->w, j->n, 0, j->c, j->n);
    }
}
static void *thr(void *p) { run1((const Job *)p); return NULL; }

static float *rnd(long n) {
    float *p = aligned_alloc(64, ((n * 4 + 63) / 64) * 64);
    for (long i = 0; i < n; i++) p[i] = (float)rand() / RAND_MAX - 0.5f;
    return p;
}

static void shape(const char *name, long M, long out, long in, int backward) {
    long n = backward ? in : out, k = backward ? out : in;
    float *w = rnd(out * in), *a = rnd(2 * M * k), *c0 = rnd(2 * M * n), *c1 = rnd(2 * M * n);
    float *pk = aligned_alloc(64, mt_packed_size(k, n) * 4 + 64);
    if (!backward) mt_pack_b(pk, w, k, n, 1, in);   // B(kk, j) = W[j, kk]
    else mt_pack_b(pk, w, k, n, in, 1);             // B(kk, j) = W[kk, j]
    double flop = 2.0 * M * n * k;
    int reps = (int)(3e8 / flop) + 1;
    double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}};
    for (int round = 0; round < 9; round++)
        for (int p = 0; p < 2; p++) {
            Job j = {p, backward, M, n, k, a, w, pk, p ? c1 : c0, reps};
            double t0 = cpu();
            run1(&j);
            double t = (cpu() - t0) / reps;
            if (t < best[p][0]) best[p][0] = t;
            // 2 threads
            Job j2[2] = {j, j};
            if (M >= 512) { j2[0].m = M / 2; j2[1].m = M - M / 2; j2[1].a = a + (M / 2) * k; j2[1].c = j.c + (M / 2) * n; }
            else { j2[1].a = a + M * k; j2[1].c = j.c + M * n; }
            pthread_t th;
            double w0 = wall();
            pthread_create(&th, NULL, thr, &j2[1]);
            run1(&j2[0]);
            pthread_join(th, NULL);
            double tw = (wall() - w0) / reps;
            if (tw < best[p][1]) best[p][1] = tw;
        }
    double f2 = M >= 512 ? flop : 2 * flop, maxd = 0, maxy = 0;
    for (long i = 0; i < M * n; i++) {
        double d = fabs(c0[i] - c1[i]);
        if (d > maxd) maxd = d;
        if (fabs(c0[i]) > maxy) maxy = fabs(c0[i]);
    }
    printf("%-22s %s M=%4ld N=%4ld K=%4ld | 1T openblas %6.1f packed %6.1f GFLOP/s (%+5.1f%%) | 2T openblas %6.1f packed %6.1f (%+5.1f%%) | rel diff %.1e\n",
           name, backward ? "dx=dy.W  " : "y=x.W^T  ", M, n, k, flop / best[0][0] * 1e-9, flop / best[1][0] * 1e-9,
           (best[0][0] / best[1][0] - 1) * 100, f2 / best[0][1] * 1e-9, f2 / best[1][1] * 1e-9,
           (best[0][1] / best[1][1] - 1) * 100, maxd / maxy);
    free(w); free(a); free(c0); free(c1); free(pk);
}

int main(int argc, char **argv) {
    openblas_set_num_threads(1);
    printf("packed kernel: %s, OpenBLAS core: %s\n", mt_packed_kernel(), openblas_get_corename());
    for (int bwd = 0; bwd < 2; bwd++) {
        shape("bench-small q,o", 1024, 512, 512, bwd);
        shape("bench-small k,v", 1024, 128, 512, bwd);
        shape("bench-small gate,up", 256, 1024, 512, bwd);
        shape("bench-small down", 256, 512, 1024, bwd);
        shape("bench-64 gate,up", 128, 256, 512, bwd);
        shape("bench-64 down", 128, 512, 256, bwd);
        shape("lm head", 1024, 8000, 512, bwd);
    }
    return 0;
}
