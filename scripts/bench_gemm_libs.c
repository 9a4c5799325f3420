// OpenBLAS against BLIS and oneDNN on the training step's matrix products (issue 12: "choose by
// measurement per CPU class and shape"). Every product is C[m, n] = op(A) op(B), row-major, with
// the transposes moe-tune passes to BLAS.gemm (Layers/Linear.swift, LoRA.swift, Attention.swift):
//   fwd  y = x W^T         (N, T)  m = rows, n = out, k = in
//   dx   dx = dy W          (N, N)  m = rows, n = in,  k = out
//   dW   dW = dy^T x        (T, N)  m = out,  n = in,  k = rows  (frozen weights: not in the step,
//                                    measured for completeness; LoRA's dA/dB are of this form)
// Build and run (Debian 12; the two extra libraries: apt-get install libblis-pthread-dev libdnnl-dev):
//   cc -O2 scripts/bench_gemm_libs.c $(pkg-config --cflags --libs openblas) -ldnnl -lgomp -ldl -lm \
//     -lpthread -o /tmp/bgl && /tmp/bgl [rounds] [filter]
// OpenBLAS and oneDNN are linked; BLIS is dlopen'ed with RTLD_LOCAL | RTLD_DEEPBIND (it exports
// the same cblas_sgemm / sgemm_ symbols as OpenBLAS) and called through its own bli_sgemm, which
// takes BLIS's small/skinny "sup" path below its thresholds. Variants:
//   openblas   cblas_sgemm, one thread (as moe-tune calls it)
//   blis       bli_sgemm, one thread
//   dnnl       dnnl_sgemm, one OpenMP thread
//   dnnl-pre   oneDNN matmul primitive, weights in the layout the primitive picks (format "any"),
//              reordered once outside the timing (only products whose B is a frozen weight)
// 1T: one thread, thread-CPU time (CLOCK_THREAD_CPUTIME_ID), best of `rounds` rounds, the
// variants alternating inside each round. 2T (shapes marked so): each library's own two threads,
// wall time, best of rounds; OpenBLAS also as moe-tune splits (two pthreads, each half of C,
// single-threaded OpenBLAS). Prints GFLOP/s (2mnk / time) and the largest |C - C_openblas| /
// max |C_openblas| of each variant; exits 2 if one exceeds 1e-5 (sums of up to 8000 products
// of values in [-0.5, 0.5] in another order: a few 1e-7 is rounding, more is a wrong call).
#define _GNU_SOURCE
#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern void openblas_set_num_threads(int);
extern char *openblas_get_corename(void);
extern void omp_set_num_threads(int);

static double tcpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double wall(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

// BLIS through dlsym: bli_sgemm(transa, transb, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc).
typedef void (*bli_sgemm_t)(int, int, int64_t, int64_t, int64_t, float *, float *, int64_t, int64_t,
                            float *, int64_t, int64_t, float *, float *, int64_t, int64_t);
static bli_sgemm_t bli_sgemm_p;
static void (*bli_set_threads_p)(int64_t);

#define CHECK(x) do { dnnl_status_t s_ = (x); if (s_ != dnnl_success) { fprintf(stderr, "%s: %d\n", #x, (int)s_); exit(1); } } while (0)
static dnnl_engine_t eng;
static dnnl_stream_t strm;

typedef struct {
    const char *name;
    int ta, tb;        // 1: transposed (op(A) = A^T stored [k, m]; op(B) = B^T stored [n, k])
    long m, n, k;
    int weightB;       // B is a frozen weight: dnnl-pre applies
    int two;           // also measure two threads
} Shape;

typedef struct {
    const Shape *s;
    float *a, *b, *c;
    long lda, ldb, ldc;
} Op;

static void run_openblas(const Op *o, long m0, long m1, long n0, long n1) {
    const Shape *s = o->s;
    const float *a = s->ta ? o->a + m0 : o->a + m0 * o->lda;
    const float *b = s->tb ? o->b + n0 * o->ldb : o->b + n0;
    cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans,
                m1 - m0, n1 - n0, s->k, 1, a, o->lda, b, o->ldb, 0, o->c + m0 * o->ldc + n0, o->ldc);
}
static void run_blis(const Op *o) {
    const Shape *s = o->s;
    float one = 1, zero = 0;
    // op(A) [m, k]: row stride, column stride; transposes as strides (what BLIS does itself).
    int64_t rsa = s->ta ? 1 : o->lda, csa = s->ta ? o->lda : 1;
    int64_t rsb = s->tb ? 1 : o->ldb, csb = s->tb ? o->ldb : 1;
    bli_sgemm_p(0, 0, s->m, s->n, s->k, &one, o->a, rsa, csa, o->b, rsb, csb, &zero, o->c, o->ldc, 1);
}
static void run_dnnl(const Op *o) {
    const Shape *s = o->s;
    CHECK(dnnl_sgemm(s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->m, s->n, s->k, 1, o->a, o->lda, o->b, o->ldb, 0, o->c, o->ldc));
}

typedef struct { dnnl_primitive_t prim; dnnl_memory_t src, wei, dst; } Pre;
static Pre make_pre(const Op *o) {
    const Shape *s = o->s;
    Pre p;
    dnnl_memory_desc_t smd, wplain, wany, dmd;
    dnnl_dims_t sd = {s->m, s->k}, wd = {s->k, s->n}, dd = {s->m, s->n};
    dnnl_dims_t ss = {o->lda, 1}, ws, ds = {o->ldc, 1};
    if (s->tb) { ws[0] = 1; ws[1] = o->ldb; } else { ws[0] = o->ldb; ws[1] = 1; }
    CHECK(dnnl_memory_desc_init_by_strides(&smd, 2, sd, dnnl_f32, ss));
    CHECK(dnnl_memory_desc_init_by_strides(&wplain, 2, wd, dnnl_f32, ws));
    CHECK(dnnl_memory_desc_init_by_tag(&wany, 2, wd, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_strides(&dmd, 2, dd, dnnl_f32, ds));
    dnnl_matmul_desc_t md;
    CHECK(dnnl_matmul_desc_init(&md, &smd, &wany, NULL, &dmd));
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL));
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    CHECK(dnnl_primitive_create(&p.prim, pd));
    dnnl_memory_t wsrc;
    CHECK(dnnl_memory_create(&wsrc, &wplain, eng, o->b));
    CHECK(dnnl_memory_create(&p.wei, wmd, eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_t rpd;
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, &wplain, eng, wmd, eng, NULL));
    dnnl_primitive_t r;
    CHECK(dnnl_primitive_create(&r, rpd));
    dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, wsrc}, {DNNL_ARG_TO, p.wei}};
    CHECK(dnnl_primitive_execute(r, strm, 2, ra));
    CHECK(dnnl_stream_wait(strm));
    CHECK(dnnl_memory_create(&p.src, &smd, eng, o->a));
    CHECK(dnnl_memory_create(&p.dst, &dmd, eng, o->c));
    return p;
}
static void run_pre(const Pre *p) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, p->src}, {DNNL_ARG_WEIGHTS, p->wei}, {DNNL_ARG_DST, p->dst}};
    CHECK(dnnl_primitive_execute(p->prim, strm, 3, args));
    CHECK(dnnl_stream_wait(strm));
}

typedef struct { const Op *o; long m0, m1, n0, n1; int reps; } Half;
static void *half_thr(void *p) {
    Half *h = p;
    for (int r = 0; r < h->reps; r++) run_openblas(h->o, h->m0, h->m1, h->n0, h->n1);
    return NULL;
}

static float *rnd(long n) {
    float *p = aligned_alloc(64, ((n * 4 + 63) / 64) * 64);
    for (long i = 0; i < n; i++) p[i] = (float)rand() / RAND_MAX - 0.5f;
    return p;
}
static double reldiff(const float *x, const float *ref, long n) {
    double mx = 0, d = 0;
    for (long i = 0; i < n; i++) { mx = fmax(mx, fabs(ref[i])); d = fmax(d, fabs(x[i] - ref[i])); }
    return d / mx;
}

enum { OB, BL, DN, PRE, NV };
static const char *vname[NV] = {"openblas", "blis", "dnnl", "dnnl-pre"};

static void set_threads(int t) {
    openblas_set_num_threads(t);
    bli_set_threads_p(t);
    omp_set_num_threads(t);
}

static void bench(const Shape *s, int rounds) {
    long ar = s->ta ? s->k : s->m, ac = s->ta ? s->m : s->k;   // A stored [ar, ac]
    long br = s->tb ? s->n : s->k, bc = s->tb ? s->k : s->n;
    Op o[NV];
    float *a = rnd(ar * ac), *b = rnd(br * bc);
    for (int v = 0; v < NV; v++) o[v] = (Op){s, a, b, rnd(s->m * s->n), ac, bc, s->n};
    double flop = 2.0 * s->m * s->n * s->k;
    int reps = (int)(2e8 / flop) + 1;
    Pre pre;
    if (s->weightB) pre = make_pre(&o[PRE]);
    for (int threads = 1; threads <= (s->two ? 2 : 1); threads++) {
        set_threads(threads);
        int nv = threads == 1 ? NV : NV + 1;   // 2T: + OpenBLAS split as moe-tune does
        double best[NV + 1];
        for (int v = 0; v <= NV; v++) best[v] = 1e30;
        for (int round = 0; round < rounds; round++)
            for (int v = 0; v < nv; v++) {
                if (v == PRE && !s->weightB) continue;
                double t0 = threads == 1 ? tcpu() : wall();
                if (v == NV) {
                    // moe-tune's split: rows of C when m >= n, else columns; two threads.
                    Half h[2];
                    for (int p = 0; p < 2; p++) {
                        h[p] = (Half){&o[OB], 0, s->m, 0, s->n, reps};
                        if (s->m >= s->n) { long per = (s->m + 1) / 2; h[p].m0 = p * per; h[p].m1 = p ? s->m : per; }
                        else { long per = (s->n + 1) / 2; h[p].n0 = p * per; h[p].n1 = p ? s->n : per; }
                    }
                    openblas_set_num_threads(1);
                    pthread_t th;
                    pthread_create(&th, NULL, half_thr, &h[1]);
                    half_thr(&h[0]);
                    pthread_join(th, NULL);
                    openblas_set_num_threads(threads);
                } else
                    for (int r = 0; r < reps; r++) {
                        if (v == OB) run_openblas(&o[OB], 0, s->m, 0, s->n);
                        else if (v == BL) run_blis(&o[BL]);
                        else if (v == DN) run_dnnl(&o[DN]);
                        else run_pre(&pre);
                    }
                double t = ((threads == 1 ? tcpu() : wall()) - t0) / reps;
                if (t < best[v]) best[v] = t;
            }
        printf("%-34s %c%c %5ld %5ld %5ld %dT", s->name, s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->m, s->n, s->k, threads);
        for (int v = 0; v < NV; v++) {
            if (v == PRE && !s->weightB) printf("  %8s:    -  ", vname[v]);
            else printf("  %8s: %6.1f", vname[v], flop / best[v] * 1e-9);
        }
        if (threads == 2) printf("  ob-split: %6.1f", flop / best[NV] * 1e-9);
        double dbl = reldiff(o[BL].c, o[OB].c, s->m * s->n), ddn = reldiff(o[DN].c, o[OB].c, s->m * s->n);
        double dpre = s->weightB ? reldiff(o[PRE].c, o[OB].c, s->m * s->n) : 0;
        printf("  |diff| bl %.0e dn %.0e", dbl, ddn);
        if (s->weightB) printf(" pre %.0e", dpre);
        printf("\n");
        if (dbl > 1e-5 || ddn > 1e-5 || dpre > 1e-5) {
            fprintf(stderr, "%s: a library's result differs from OpenBLAS's by more than 1e-5 of its largest value\n", s->name);
            exit(2);
        }
        fflush(stdout);
    }
    free(a); free(b);
    for (int v = 0; v < NV; v++) free(o[v].c);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    const char *filter = argc > 2 ? argv[2] : NULL;
    void *h = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) h = dlopen("/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) { fprintf(stderr, "BLIS not found: apt-get install libblis-pthread-dev (%s)\n", dlerror()); return 1; }
    bli_sgemm_p = (bli_sgemm_t)dlsym(h, "bli_sgemm");
    bli_set_threads_p = (void (*)(int64_t))dlsym(h, "bli_thread_set_num_threads");
    char *(*bver)(void) = (char *(*)(void))dlsym(h, "bli_info_get_version_str");
    int (*barch)(void) = (int (*)(void))dlsym(h, "bli_arch_query_id");
    char *(*barchs)(int) = (char *(*)(int))dlsym(h, "bli_arch_string");
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));
    const dnnl_version_t *dv = dnnl_version();
    printf("OpenBLAS %s core | BLIS %s arch %s | oneDNN %d.%d.%d (%s)\n", openblas_get_corename(),
           bver ? bver() : "?", barchs && barch ? barchs(barch()) : "?", dv->major, dv->minor, dv->patch, dv->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other");
    printf("GFLOP/s; 1T thread-CPU time, 2T wall; best of %d rounds\n", rounds);

    const int R = 8;   // LoRA rank of the bench (and 16 below)
    Shape shapes[] = {
        // bench-small (hidden 512, 8 heads x 64, 2 kv heads, experts 8 x 1024, vocab 8000), batch 4 x 256 = 1024 rows.
        {"q,o fwd 1024x512x512", 0, 1, 1024, 512, 512, 1, 1},
        {"q,o dx", 0, 0, 1024, 512, 512, 1, 1},
        {"q,o dW (not in step)", 1, 0, 512, 512, 1024, 0, 0},
        {"k,v fwd 1024x128x512", 0, 1, 1024, 128, 512, 1, 1},
        {"k,v dx", 0, 0, 1024, 512, 128, 1, 0},
        {"expert gate,up fwd 256x1024x512", 0, 1, 256, 1024, 512, 1, 0},
        {"expert gate,up dx", 0, 0, 256, 512, 1024, 1, 0},
        {"expert down fwd 256x512x1024", 0, 1, 256, 512, 1024, 1, 0},
        {"expert down dx", 0, 0, 256, 1024, 512, 1, 0},
        {"LM head fwd 1024x8000x512", 0, 1, 1024, 8000, 512, 1, 1},
        {"LM head dx", 0, 0, 1024, 512, 8000, 1, 1},
        // bench-64 experts (64 x 256, top-8): 128 rows each.
        {"b64 expert gate,up fwd 128x256x512", 0, 1, 128, 256, 512, 1, 0},
        {"b64 expert gate,up dx", 0, 0, 128, 512, 256, 1, 0},
        {"b64 expert down fwd 128x512x256", 0, 1, 128, 512, 256, 1, 0},
        {"b64 expert down dx", 0, 0, 128, 256, 512, 1, 0},
        // the halves moe-tune's split gives each of two workers
        {"q,o fwd half 512x512x512", 0, 1, 512, 512, 512, 1, 0},
        {"LM head fwd half 1024x4000x512", 0, 1, 1024, 4000, 512, 1, 0},
        // attention per head (T = 256, d = 64): S = Q K^T, O = P V, dP = dO V^T, dV = P^T dO, dQ = dS K
        {"attn QK^T 256x256x64", 0, 1, 256, 256, 64, 0, 0},
        {"attn PV / dS K 256x64x256", 0, 0, 256, 64, 256, 0, 0},
        {"attn P^T dO 256x64x256", 1, 0, 256, 64, 256, 0, 0},
        // LoRA r = 8 on q (512 -> 512), 1024 rows: u = x A^T, y += u B^T, dB = dy^T u, du = dy B, dA = du^T x, dx += du A
        {"lora q u=xA^T 1024x8x512", 0, 1, 1024, R, 512, 0, 0},
        {"lora q y+=uB^T 1024x512x8", 0, 1, 1024, 512, R, 0, 0},
        {"lora q dB=dy^T u 512x8x1024", 1, 0, 512, R, 1024, 0, 0},
        {"lora q du=dy B 1024x8x512", 0, 0, 1024, R, 512, 0, 0},
        {"lora q dA=du^T x 8x512x1024", 1, 0, R, 512, 1024, 0, 0},
        {"lora q dx+=du A 1024x512x8", 0, 0, 1024, 512, R, 0, 0},
        // LoRA r = 8 on k/v (512 -> 128)
        {"lora k u=xA^T 1024x8x512", 0, 1, 1024, R, 512, 0, 0},
        {"lora k y+=uB^T 1024x128x8", 0, 1, 1024, 128, R, 0, 0},
        {"lora k dB=dy^T u 128x8x1024", 1, 0, 128, R, 1024, 0, 0},
        {"lora k du=dy B 1024x8x128", 0, 0, 1024, R, 128, 0, 0},
        // LoRA r = 8 on an expert gate/up (512 -> 1024), 256 rows, and bench-64's (512 -> 256), 128 rows
        {"lora exp u=xA^T 256x8x512", 0, 1, 256, R, 512, 0, 0},
        {"lora exp y+=uB^T 256x1024x8", 0, 1, 256, 1024, R, 0, 0},
        {"lora exp dB=dy^T u 1024x8x256", 1, 0, 1024, R, 256, 0, 0},
        {"lora exp du=dy B 256x8x1024", 0, 0, 256, R, 1024, 0, 0},
        {"lora exp dA=du^T x 8x512x256", 1, 0, R, 512, 256, 0, 0},
        {"lora exp dx+=du A 256x512x8", 0, 0, 256, 512, R, 0, 0},
        {"lora b64 u=xA^T 128x8x512", 0, 1, 128, R, 512, 0, 0},
        {"lora b64 y+=uB^T 128x256x8", 0, 1, 128, 256, R, 0, 0},
        {"lora b64 dA=du^T x 8x512x128", 1, 0, R, 512, 128, 0, 0},
        // r = 16 on q
        {"lora16 q u=xA^T 1024x16x512", 0, 1, 1024, 16, 512, 0, 0},
        {"lora16 q y+=uB^T 1024x512x16", 0, 1, 1024, 512, 16, 0, 0},
        {"lora16 q dB=dy^T u 512x16x1024", 1, 0, 512, 16, 1024, 0, 0},
        {"lora16 q dA=du^T x 16x512x1024", 1, 0, 16, 512, 1024, 0, 0},
        // the large-sgemm reference
        {"large 2048^3", 0, 1, 2048, 2048, 2048, 0, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!filter || strstr(shapes[i].name, filter)) bench(&shapes[i], rounds);
    return 0;
}
