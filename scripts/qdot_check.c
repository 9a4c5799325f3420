// Check and benchmark of the quantized products in Sources/CKernels/qdot.c, qdot_k.c (ggml
// blocks times an 8-bit activation), mt_nf4_matvec and mt_bf16_matvec. From the repository
// root (clang -O3 as the package builds CKernels; gcc works the same):
//   clang -O3 -ffp-contract=off -ISources/CKernels/include -ISources/CKernels scripts/qdot_check.c
//     Sources/CKernels/qdot.c Sources/CKernels/qdot_k.c Sources/CKernels/dispatch.c
//     Sources/CKernels/nf4.c -lm -o /tmp/qdot_check && /tmp/qdot_check [--no-bench] [--bench-only] [fixture dir]
// (-ffp-contract=off keeps this file's reference dequantizers free of fused multiply-adds.)
// Checks, for every type (random blocks: random bytes with finite f16 scales, every bit
// pattern; and rows of normal values quantized by the simple quantizers below):
//   0. this file's dequantizers equal gguf-py's bit for bit on the real blocks of
//      Tests/MoETuneTests/Fixtures/gguf/types.gguf (expected values: types-expected.gguf, written
//      by gguf.quants.dequantize), and the activation quantization keeps its documented layout;
//   a. scalar and AVX2 agree within 1e-6 of the row's sum of |terms|;
//   b. scalar equals sum_i dequant(w)_i * dequant(xq)_i (double) within 1e-5 of that sum;
//   m. mt_qdot_matmat for m = 1..9 equals mt_qdot_row per activation, bit for bit, each kernel;
//   c. prints the error against the unquantized fp32 activation: ||y - y_fp32|| / ||y_fp32||
//      over the rows (y_fp32 = dequant(w) · x in double).
// NF4 (plain and double-quantized scales, odd widths) and bf16: scalar and AVX2 against
// mt_nf4_dequant / the exact widening, then a dot in double; NF4 with unit activations equal
// to mt_nf4_dequant's values bit for bit (the block scale computed exactly as there).
// Benchmark: one thread (thread CPU time, best of 3), matvec GB/s of weight bytes for
// [rows x cols] = [out x in] shapes, "hot" (the same matrix again, from cache where it fits)
// and "cold" (cycling through copies filling 512 MB, so every call reads from DRAM), beside a
// 512 MB read (sum) on the same machine.
#include "ckernels.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };
static const int TYPES[] = {Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K};
#define NTYPES 8

static const char *tname(int t) {
    switch (t) {
    case Q4_0: return "Q4_0"; case Q4_1: return "Q4_1"; case Q5_0: return "Q5_0"; case Q5_1: return "Q5_1";
    case Q8_0: return "Q8_0"; case Q4_K: return "Q4_K"; case Q5_K: return "Q5_K"; case Q6_K: return "Q6_K";
    }
    return "?";
}
static int bsize(int t) { return t >= Q4_K ? 256 : 32; }
static long tsize(int t) {
    switch (t) {
    case Q4_0: return 18; case Q4_1: return 20; case Q5_0: return 22; case Q5_1: return 24; case Q8_0: return 34;
    case Q4_K: return 144; case Q5_K: return 176; default: return 210;
    }
}
static long row_bytes(int t, long n) { return n / bsize(t) * tsize(t); }

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; if (failures <= 30) { printf("FAIL: "); printf(__VA_ARGS__); printf("\n"); } } } while (0)

// ---- random numbers, halves -----------------------------------------------------------------
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static double unif(void) { return (rnd64() >> 11) * 0x1p-53; }
static float normal(void) {
    double u = unif() + 1e-300, v = unif();
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

static float half_dec(const uint8_t *p) {
    unsigned h = p[0] | (p[1] << 8);
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
    return (h & 0x8000) ? -v : v;
}
// fp32 -> half, round to nearest even (finite, |v| < 65520).
static void half_enc(float v, uint8_t *p) {
    unsigned sign = v < 0 || (v == 0 && signbit(v)) ? 0x8000 : 0;
    double a = fabs((double)v);
    unsigned h;
    if (a < 0x1p-14) {
        h = (unsigned)nearbyint(a * 0x1p24);  // subnormal (1024 rounds into the smallest normal)
    } else {
        int e;
        double f = frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
        double mant = nearbyint(f * 2048);  // 11 bits
        if (mant == 2048) { mant = 1024; e++; }
        h = ((unsigned)(e + 14) << 10) | ((unsigned)mant - 1024);
    }
    h |= sign;
    p[0] = h & 255;
    p[1] = h >> 8;
}

// ---- reference dequantizers (ggml's order of operations, GGMLDequantize.swift) ---------------
static void dequant_block(int t, const uint8_t *b, float *y) {
    switch (t) {
    case Q4_0: { float d = half_dec(b);
        for (int j = 0; j < 16; j++) { y[j] = (float)((b[2 + j] & 15) - 8) * d; y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d; } break; }
    case Q4_1: { float d = half_dec(b), m = half_dec(b + 2);
        for (int j = 0; j < 16; j++) { y[j] = (float)(b[4 + j] & 15) * d + m; y[j + 16] = (float)(b[4 + j] >> 4) * d + m; } break; }
    case Q5_0: { float d = half_dec(b); uint32_t qh; memcpy(&qh, b + 2, 4);
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (float)(((b[6 + j] & 15) | h0) - 16) * d; y[j + 16] = (float)(((b[6 + j] >> 4) | h1) - 16) * d; } break; }
    case Q5_1: { float d = half_dec(b), m = half_dec(b + 2); uint32_t qh; memcpy(&qh, b + 4, 4);
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (float)((b[8 + j] & 15) | h0) * d + m; y[j + 16] = (float)((b[8 + j] >> 4) | h1) * d + m; } break; }
    case Q8_0: { float d = half_dec(b); for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d; break; }
    case Q4_K: case Q5_K: {
        float d = half_dec(b), dmin = half_dec(b + 2);
        const uint8_t *s = b + 4, *qh = b + 16, *qs = b + (t == Q4_K ? 16 : 48);
        for (int g = 0; g < 4; g++) {
            float sm[2][2];
            for (int h = 0; h < 2; h++) {
                int j = 2 * g + h, sc, m;
                if (j < 4) { sc = s[j] & 63; m = s[j + 4] & 63; }
                else { sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
                sm[h][0] = d * (float)sc; sm[h][1] = dmin * (float)m;
            }
            for (int l = 0; l < 32; l++) {
                int q0 = qs[32 * g + l] & 15, q1 = qs[32 * g + l] >> 4;
                if (t == Q5_K) { q0 += (qh[l] >> (2 * g) & 1) * 16; q1 += (qh[l] >> (2 * g + 1) & 1) * 16; }
                y[64 * g + l] = sm[0][0] * (float)q0 - sm[0][1];
                y[64 * g + 32 + l] = sm[1][0] * (float)q1 - sm[1][1];
            }
        }
        break;
    }
    case Q6_K: {
        float d = half_dec(b + 208);
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = b + 64 * n, *qh = b + 128 + 32 * n;
            const int8_t *sc = (const int8_t *)(b + 192 + 8 * n);
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32, q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32, q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[128 * n + l] = (d * (float)sc[is]) * (float)q1;
                y[128 * n + l + 32] = (d * (float)sc[is + 2]) * (float)q2;
                y[128 * n + l + 64] = (d * (float)sc[is + 4]) * (float)q3;
                y[128 * n + l + 96] = (d * (float)sc[is + 6]) * (float)q4;
            }
        }
        break;
    }
    }
}
static void dequant_row(int t, const uint8_t *w, long n, float *y) {
    for (long b = 0; b < n / bsize(t); b++) dequant_block(t, w + b * tsize(t), y + b * bsize(t));
}
// The activation as documented in ckernels.h.
static void dequant_act(int t, const uint8_t *xq, long n, float *y) {
    if (bsize(t) == 32) {
        // 68 bytes: 8 fp32 scales (one per 4 values), fp32 sum of the values, 32 int8.
        for (long b = 0; b < n / 32; b++) { float d[8]; memcpy(d, xq + 68 * b, 32);
            for (int i = 0; i < 32; i++) y[32 * b + i] = d[i / 4] * (float)(int8_t)xq[68 * b + 36 + i]; }
    } else {
        for (long b = 0; b < n / 256; b++) { float d; memcpy(&d, xq + 292 * b, 4);
            for (int i = 0; i < 256; i++) y[256 * b + i] = d * (float)(int8_t)xq[292 * b + 4 + i]; }
    }
}

// ---- weight generators ------------------------------------------------------------------------
// Random bytes, the f16 scale fields set to finite values (as scripts/make_gguf_fixtures.py).
static void random_blocks(int t, uint8_t *w, long nblocks) {
    for (long b = 0; b < nblocks; b++) {
        uint8_t *p = w + b * tsize(t);
        for (long i = 0; i < tsize(t); i++) p[i] = (uint8_t)rnd64();
        float s = (float)(0.001 + 0.049 * unif());
        switch (t) {
        case Q4_K: case Q5_K: half_enc(s, p); half_enc((float)(0.001 + 0.049 * unif()), p + 2); break;
        case Q6_K: half_enc(s, p + 208); break;
        case Q4_1: case Q5_1: half_enc(rnd64() & 1 ? s : -s, p); half_enc((float)(0.1 * (unif() - 0.5)), p + 2); break;
        default: half_enc(rnd64() & 1 ? s : -s, p); break;
        }
    }
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// Simple quantizers (not ggml's search for the best scales): one block of x into p.
static void quantize_block(int t, const float *x, uint8_t *p) {
    memset(p, 0, tsize(t));
    if (t == Q4_0 || t == Q5_0 || t == Q8_0) {
        float amax = 0; for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
        int L = t == Q4_0 ? 7 : t == Q5_0 ? 15 : 127, off = t == Q4_0 ? 8 : t == Q5_0 ? 16 : 0;
        half_enc(amax / L, p); float d = half_dec(p);
        for (int i = 0; i < 32; i++) {
            int q = d > 0 ? clampi((int)lrintf(x[i] / d) + off, off - L - (t == Q8_0 ? 0 : 1), off + L) : off;
            if (t == Q8_0) p[2 + i] = (uint8_t)(int8_t)q;
            else {
                int lo = q & 15, hb = (q >> 4) & 1, byte = t == Q4_0 ? 2 : 6;
                p[byte + (i & 15)] |= (uint8_t)(i < 16 ? lo : lo << 4);
                if (t == Q5_0 && hb) p[2 + i / 8] |= (uint8_t)(1 << (i % 8));
            }
        }
    } else if (t == Q4_1 || t == Q5_1) {
        float mn = x[0], mx = x[0]; for (int i = 1; i < 32; i++) { mn = fminf(mn, x[i]); mx = fmaxf(mx, x[i]); }
        int L = t == Q4_1 ? 15 : 31;
        half_enc((mx - mn) / L, p); half_enc(mn, p + 2);
        float d = half_dec(p), m = half_dec(p + 2);
        for (int i = 0; i < 32; i++) {
            int q = d > 0 ? clampi((int)lrintf((x[i] - m) / d), 0, L) : 0;
            int byte = t == Q4_1 ? 4 : 8;
            p[byte + (i & 15)] |= (uint8_t)(i < 16 ? (q & 15) : (q & 15) << 4);
            if (t == Q5_1 && (q >> 4)) p[4 + i / 8] |= (uint8_t)(1 << (i % 8));
        }
    } else if (t == Q4_K || t == Q5_K) {
        int L = t == Q4_K ? 15 : 31;
        float scale[8], minv[8], smax = 0, mmax = 0;
        for (int j = 0; j < 8; j++) {
            float mn = 0, mx = x[32 * j];
            for (int i = 0; i < 32; i++) { mn = fminf(mn, x[32 * j + i]); mx = fmaxf(mx, x[32 * j + i]); }
            scale[j] = (mx - mn) / L; minv[j] = -mn;
            smax = fmaxf(smax, scale[j]); mmax = fmaxf(mmax, minv[j]);
        }
        half_enc(smax / 63, p); half_enc(mmax / 63, p + 2);
        float d = half_dec(p), dmin = half_dec(p + 2);
        int sc[8], m[8];
        for (int j = 0; j < 8; j++) {
            sc[j] = d > 0 ? clampi((int)lrintf(scale[j] / d), 0, 63) : 0;
            m[j] = dmin > 0 ? clampi((int)lrintf(minv[j] / dmin), 0, 63) : 0;
        }
        for (int j = 0; j < 4; j++) {
            p[4 + j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
            p[8 + j] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
            p[12 + j] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
        }
        uint8_t *qs = p + (t == Q4_K ? 16 : 48), *qh = p + 16;
        for (int j = 0; j < 8; j++) {
            float ds = d * (float)sc[j], mm = dmin * (float)m[j];
            for (int i = 0; i < 32; i++) {
                int q = ds > 0 ? clampi((int)lrintf((x[32 * j + i] + mm) / ds), 0, L) : 0;
                int g = j / 2, l = i;
                qs[32 * g + l] |= (uint8_t)((j & 1) ? (q & 15) << 4 : (q & 15));
                if (t == Q5_K && (q >> 4)) qh[l] |= (uint8_t)(1 << j);
            }
        }
    } else {  // Q6_K
        float scale[16], smax = 0;
        for (int k = 0; k < 16; k++) {
            float a = 0; for (int i = 0; i < 16; i++) a = fmaxf(a, fabsf(x[16 * k + i]));
            scale[k] = a / 31; smax = fmaxf(smax, scale[k]);
        }
        half_enc(smax / 127, p + 208);
        float d = half_dec(p + 208);
        int q[256];
        for (int k = 0; k < 16; k++) {
            int sc = d > 0 ? clampi((int)lrintf(scale[k] / d), -128, 127) : 0;
            p[192 + k] = (uint8_t)(int8_t)sc;
            float ds = d * (float)sc;
            for (int i = 0; i < 16; i++) q[16 * k + i] = (ds > 0 ? clampi((int)lrintf(x[16 * k + i] / ds), -32, 31) : 0) + 32;
        }
        for (int n = 0; n < 2; n++)
            for (int l = 0; l < 32; l++) {
                const int *o = q + 128 * n;
                p[64 * n + l] = (uint8_t)((o[l] & 15) | ((o[l + 64] & 15) << 4));
                p[64 * n + 32 + l] = (uint8_t)((o[l + 32] & 15) | ((o[l + 96] & 15) << 4));
                p[128 + 32 * n + l] = (uint8_t)((o[l] >> 4) | ((o[l + 32] >> 4) << 2) | ((o[l + 64] >> 4) << 4) | ((o[l + 96] >> 4) << 6));
            }
    }
}

// ---- a minimal GGUF reader (for the fixtures) ---------------------------------------------------
typedef struct { char name[64]; int type; long count; const uint8_t *data; } gtensor;
typedef struct { uint8_t *buf; long size; int nt; gtensor t[64]; } gfile;

static uint64_t rdu(const uint8_t **p, int k) { uint64_t v = 0; for (int i = 0; i < k; i++) v |= (uint64_t)(*p)[i] << (8 * i); *p += k; return v; }
static void skip_value(const uint8_t **p, uint32_t vt) {
    static const int sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (vt == 8) { uint64_t l = rdu(p, 8); *p += l; }
    else if (vt == 9) { uint32_t et = (uint32_t)rdu(p, 4); uint64_t c = rdu(p, 8); for (uint64_t i = 0; i < c; i++) skip_value(p, et); }
    else *p += sz[vt];
}
static int gguf_open(const char *path, gfile *f) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    fseek(fp, 0, SEEK_END); f->size = ftell(fp); fseek(fp, 0, SEEK_SET);
    f->buf = malloc(f->size);
    if (fread(f->buf, 1, f->size, fp) != (size_t)f->size) { fclose(fp); return -1; }
    fclose(fp);
    const uint8_t *p = f->buf;
    if (memcmp(p, "GGUF", 4)) return -1;
    p += 8;
    uint64_t nt = rdu(&p, 8), nkv = rdu(&p, 8);
    long align = 32;
    for (uint64_t i = 0; i < nkv; i++) {
        uint64_t kl = rdu(&p, 8); const char *key = (const char *)p; p += kl;
        uint32_t vt = (uint32_t)rdu(&p, 4);
        if (kl == 17 && !memcmp(key, "general.alignment", 17) && vt == 4) { const uint8_t *q = p; align = (long)rdu(&q, 4); }
        skip_value(&p, vt);
    }
    uint64_t offs[64];
    f->nt = (int)(nt < 64 ? nt : 64);
    for (uint64_t i = 0; i < nt && i < 64; i++) {
        uint64_t nl = rdu(&p, 8);
        snprintf(f->t[i].name, sizeof f->t[i].name, "%.*s", (int)nl, (const char *)p); p += nl;
        uint32_t nd = (uint32_t)rdu(&p, 4); long count = 1;
        for (uint32_t k = 0; k < nd; k++) count *= (long)rdu(&p, 8);
        f->t[i].type = (int)rdu(&p, 4); f->t[i].count = count; offs[i] = rdu(&p, 8);
    }
    long start = ((p - f->buf) + align - 1) / align * align;
    for (int i = 0; i < f->nt; i++) f->t[i].data = f->buf + start + offs[i];
    return 0;
}
static const gtensor *gguf_find(const gfile *f, const char *name) {
    for (int i = 0; i < f->nt; i++) if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

// ---- checks -------------------------------------------------------------------------------------
static void check_fixtures(const char *dir) {
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/types.gguf", dir); snprintf(p2, sizeof p2, "%s/types-expected.gguf", dir);
    gfile f, e;
    if (gguf_open(p1, &f) || gguf_open(p2, &e)) { printf("0. fixtures not found in %s: skipped\n", dir); return; }
    printf("0. dequantizers against gguf-py (types.gguf / types-expected.gguf):");
    for (int k = 0; k < NTYPES; k++) {
        int t = TYPES[k]; char name[32]; snprintf(name, sizeof name, "t.%s", tname(t));
        const gtensor *a = gguf_find(&f, name), *b = gguf_find(&e, name);
        if (!a || !b || a->type != t || b->type != 0) { CHECK(0, "fixture %s missing", name); continue; }
        float *y = malloc(a->count * sizeof(float));
        dequant_row(t, a->data, a->count, y);
        long diff = 0;
        for (long i = 0; i < a->count; i++) { float r; memcpy(&r, b->data + 4 * i, 4); if (memcmp(&r, &y[i], 4)) diff++; }
        CHECK(diff == 0, "%s: %ld of %ld values differ from gguf-py", tname(t), diff, a->count);
        printf(" %s %s", tname(t), diff ? "DIFF" : "ok");
        free(y);
    }
    printf("\n");
    free(f.buf); free(e.buf);
}

static void check_activation(void) {
    for (int k = 0; k < NTYPES; k++) {
        int t = TYPES[k]; long n = 1024;
        float *x = malloc(n * 4), *y = malloc(n * 4);
        for (long i = 0; i < n; i++) x[i] = normal() * (i % 97 == 0 ? 20 : 1);
        for (long i = 0; i < 32; i++) x[i] = 0;  // a zero block
        long bytes = mt_qdot_activation_bytes(t, n);
        CHECK(bytes == (bsize(t) == 32 ? n / 32 * 68 : n / 256 * 292), "%s activation bytes %ld", tname(t), bytes);
        uint8_t *xq = malloc(bytes);
        mt_qdot_quantize_activation(t, x, xq, n);
        dequant_act(t, xq, n, y);
        int bs = bsize(t);
        // One scale per group of g values (4 in the 32-value layout, 256 in the K types').
        const int g = bs == 32 ? 4 : 256;
        for (long b = 0; b < n / bs; b++) {
            const uint8_t *blk = xq + b * (bs == 32 ? 68 : 292);
            const int8_t *q = (const int8_t *)(blk + (bs == 32 ? 36 : 4));
            float total = 0;
            for (int k = 0; k < bs / g; k++) {
                const float *xs = x + b * bs + k * g;
                float amax = 0; for (int i = 0; i < g; i++) amax = fmaxf(amax, fabsf(xs[i]));
                float d; memcpy(&d, blk + 4 * k, 4);
                CHECK(d == amax / 127.0f, "%s block %ld group %d: d %g, max/127 %g", tname(t), b, k, d, amax / 127.0f);
                int sum = 0;
                for (int i = 0; i < g; i++) {
                    CHECK(fabsf(y[b * bs + k * g + i] - xs[i]) <= 0.5001f * d, "%s value %ld", tname(t), b * bs + k * g + i);
                    sum += q[k * g + i];
                }
                total += d * (float)sum;
            }
            if (bs == 32) {
                float sf; memcpy(&sf, blk + 32, 4);
                CHECK(sf == total, "%s block %ld: s %g, sum of d * q %g", tname(t), b, sf, total);
            } else {
                int16_t sums[16]; memcpy(sums, xq + b * 292 + 260, 32);
                for (int g = 0; g < 16; g++) { int s = 0; for (int i = 0; i < 16; i++) s += q[16 * g + i]; CHECK(sums[g] == s, "%s bsums", tname(t)); }
            }
        }
        CHECK(mt_qdot_activation_bytes(t, n + 16) == -1, "%s: n not a multiple refused", tname(t));
        free(x); free(y); free(xq);
    }
    CHECK(mt_qdot_activation_bytes(1, 256) == -1 && isnan(mt_qdot_row(9, 256, NULL, NULL)), "unknown types refused");
    printf("   activation quantization: d = max/127 per 4 (32-value types) or 256 values, |dequant - x| <= d/2, sums, sizes checked\n");
}

// (a), (b), (m) on `rows` rows of n values; (c) when x32 is the fp32 activation.
typedef struct { double worst_a, worst_b, err_num, err_den; } stats;

static void check_rows(int t, long n, long rows, const uint8_t *w, const float *x, stats *st, int kavx) {
    long rb = row_bytes(t, n), ab = mt_qdot_activation_bytes(t, n);
    uint8_t *xq = malloc(ab);
    mt_qdot_quantize_activation(t, x, xq, n);
    float *wd = malloc(n * 4), *xd = malloc(n * 4);
    dequant_act(t, xq, n, xd);
    for (long r = 0; r < rows; r++) {
        dequant_row(t, w + r * rb, n, wd);
        double exact = 0, mag = 0, full = 0;
        for (long i = 0; i < n; i++) { exact += (double)wd[i] * xd[i]; mag += fabs((double)wd[i] * xd[i]); full += (double)wd[i] * x[i]; }
        float s, v;
        CHECK(mt_qdot_row_with(0, t, n, w + r * rb, xq, &s) == 0, "row_with scalar");
        double eb = fabs(s - exact) / (mag > 0 ? mag : 1);
        if (eb > st->worst_b) st->worst_b = eb;
        CHECK(eb <= 1e-5, "(b) %s n=%ld row %ld: scalar %.9g, double %.9g (sum|terms| %.4g)", tname(t), n, r, s, exact, mag);
        if (kavx) {
            mt_qdot_row_with(1, t, n, w + r * rb, xq, &v);
            double ea = fabs((double)s - v) / (mag > 0 ? mag : 1);
            if (ea > st->worst_a) st->worst_a = ea;
            CHECK(ea <= 1e-6, "(a) %s n=%ld row %ld: scalar %.9g, avx2 %.9g (sum|terms| %.4g)", tname(t), n, r, s, v, mag);
        }
        st->err_num += ((double)s - full) * ((double)s - full);
        st->err_den += full * full;
    }
    free(xq); free(wd); free(xd);
}

// matmat for m = 1..9 activations against mt_qdot_row, bit for bit, every kernel.
static void check_matmat(int t, long n, long rows, const uint8_t *w, int nk) {
    long rb = row_bytes(t, n), ab = mt_qdot_activation_bytes(t, n), stride = ab + 12;
    int M = 9;
    uint8_t *xq = malloc(stride * M);
    float *x = malloc(n * 4);
    for (int j = 0; j < M; j++) { for (long i = 0; i < n; i++) x[i] = normal(); mt_qdot_quantize_activation(t, x, xq + j * stride, n); }
    long r0 = rows / 3, r1 = rows;
    float *y = malloc(sizeof(float) * M * (rows + 5));
    // No activation, or no row: nothing read, nothing written.
    for (int k = 0; k < nk; k++) {
        for (long i = 0; i < M * (rows + 5); i++) y[i] = -7.0f;
        mt_qdot_matmat_with(k, t, w, rb, r0, r1, n, xq, stride, 0, y, rows);
        mt_qdot_matmat_with(k, t, w, rb, r1, r1, n, xq, stride, 3, y, rows);
        int touched = 0;
        for (long i = 0; i < M * (rows + 5); i++) touched += y[i] != -7.0f;
        CHECK(touched == 0, "(m) %s kernel %d: m = 0 or no rows wrote %d values", tname(t), k, touched);
    }
    for (int k = 0; k < nk; k++)
        for (int m = 1; m <= M; m++) {
            long ldy = r1 - r0 + 5;
            mt_qdot_matmat_with(k, t, w, rb, r0, r1, n, xq, stride, m, y, ldy);
            for (int j = 0; j < m; j++)
                for (long r = r0; r < r1; r++) {
                    float s; mt_qdot_row_with(k, t, n, w + r * rb, xq + j * stride, &s);
                    CHECK(memcmp(&s, &y[j * ldy + r - r0], 4) == 0, "(m) %s kernel %d m=%d: row %ld act %d %.9g vs %.9g", tname(t), k, m, r, j, s, y[j * ldy + r - r0]);
                }
        }
    // matvec is matmat with m = 1, through the chosen kernel.
    mt_qdot_matvec(t, w, rb, r0, r1, n, xq, y);
    for (long r = r0; r < r1; r++) CHECK(y[r - r0] == mt_qdot_row(t, n, w + r * rb, xq), "(m) %s matvec row %ld", tname(t), r);
    free(xq); free(x); free(y);
}

static void check_types(int kavx) {
    printf("   type   weights  worst (a) avx2-scalar  worst (b) scalar-double  (c) ||y-y_fp32||/||y_fp32||\n");
    for (int k = 0; k < NTYPES; k++) {
        int t = TYPES[k];
        for (int kind = 0; kind < 2; kind++) {
            stats st = {0};
            const long ns32[] = {32, 96, 576, 1536, 4096}, nsK[] = {256, 1536, 4096};
            const long *ns = bsize(t) == 32 ? ns32 : nsK; int nn = bsize(t) == 32 ? 5 : 3;
            for (int a = 0; a < nn; a++) {
                long n = ns[a], rows = 48, rb = row_bytes(t, n);
                uint8_t *w = malloc(rb * rows);
                float *x = malloc(n * 4), *wf = malloc(n * 4);
                if (kind == 0) random_blocks(t, w, rows * n / bsize(t));
                else for (long r = 0; r < rows; r++) {
                    for (long i = 0; i < n; i++) wf[i] = normal();
                    for (long b = 0; b < n / bsize(t); b++) quantize_block(t, wf + b * bsize(t), w + r * rb + b * tsize(t));
                }
                for (long i = 0; i < n; i++) x[i] = normal();
                check_rows(t, n, rows, w, x, &st, kavx);
                if (kind == 1 && a == nn - 1) check_matmat(t, n, rows, w, kavx ? 2 : 1);
                free(w); free(x); free(wf);
            }
            printf("   %-5s  %-7s  %.2e              %.2e                 %.2e\n", tname(t), kind ? "normal" : "random",
                   st.worst_a, st.worst_b, sqrt(st.err_num / st.err_den));
        }
    }
}

static void check_nf4(int kavx) {
    const long shapes[][2] = {{7, 64}, {5, 333}, {16, 100}, {3, 1}, {64, 576}, {9, 31}};
    double worst_a = 0, worst_b = 0;
    for (int s = 0; s < 6; s++)
        for (int dq = 0; dq < 2; dq++) {
            long rows = shapes[s][0], cols = shapes[s][1], cnt = rows * cols, nbk = (cnt + 63) / 64;
            unsigned char *packed = malloc((cnt + 1) / 2 + 8);
            for (long i = 0; i < (cnt + 1) / 2 + 8; i++) packed[i] = (unsigned char)rnd64();
            float code16[16], map[256], nested[8], *absmax = malloc(nbk * 4);
            for (int i = 0; i < 16; i++) code16[i] = -1 + 2 * i / 15.0f + (i > 0 && i < 15 ? 0.01f * normal() : 0);
            for (int i = 0; i < 256; i++) map[i] = (float)(2 * unif() - 1);
            for (int i = 0; i < 8; i++) nested[i] = (float)unif();
            unsigned char *codes = malloc(nbk);
            for (long b = 0; b < nbk; b++) { absmax[b] = (float)unif(); codes[b] = (unsigned char)rnd64(); }
            float off = 0.37f, *x = malloc(cols * 4), *deq = malloc(cnt * 4), *y0 = malloc(rows * 4), *y1 = malloc(rows * 4);
            for (long j = 0; j < cols; j++) x[j] = normal();
            const float *am = dq ? NULL : absmax;
            mt_nf4_dequant_with(0, deq, packed, 0, cnt, code16, am, codes, map, nested, off);
            long r0 = rows > 2 ? 1 : 0;
            mt_nf4_matvec_with(0, y0, packed, rows, cols, r0, rows, code16, am, codes, map, nested, off, x);
            if (kavx) mt_nf4_matvec_with(1, y1, packed, rows, cols, r0, rows, code16, am, codes, map, nested, off, x);
            for (long r = r0; r < rows; r++) {
                double exact = 0, mag = 0;
                for (long j = 0; j < cols; j++) { exact += (double)deq[r * cols + j] * x[j]; mag += fabs((double)deq[r * cols + j] * x[j]); }
                double eb = fabs(y0[r - r0] - exact) / mag;
                if (eb > worst_b) worst_b = eb;
                CHECK(eb <= 1e-5, "nf4 %ldx%ld dq=%d row %ld: scalar %.9g double %.9g", rows, cols, dq, r, y0[r - r0], exact);
                if (kavx) {
                    double ea = fabs((double)y0[r - r0] - y1[r - r0]) / mag;
                    if (ea > worst_a) worst_a = ea;
                    CHECK(ea <= 1e-6, "nf4 %ldx%ld dq=%d row %ld: scalar %.9g avx2 %.9g", rows, cols, dq, r, y0[r - r0], y1[r - r0]);
                }
            }
            // x = a unit vector: y[r] must be mt_nf4_dequant's value bit for bit (the scale exact).
            for (int k = 0; k <= kavx; k++)
                for (long j = 0; j < cols; j += cols / 5 + 1) {
                    for (long i = 0; i < cols; i++) x[i] = i == j;
                    mt_nf4_matvec_with(k, y0, packed, rows, cols, 0, rows, code16, am, codes, map, nested, off, x);
                    for (long r = 0; r < rows; r++)
                        CHECK(!memcmp(&y0[r], &deq[r * cols + j], 4), "nf4 %ldx%ld dq=%d kernel %d: unit x at %ld, row %ld: %.9g vs dequant %.9g",
                              rows, cols, dq, k, j, r, y0[r], deq[r * cols + j]);
                }
            free(packed); free(absmax); free(codes); free(x); free(deq); free(y0); free(y1);
        }
    printf("   NF4 (6 shapes incl. odd widths, absmax and double-quantized): worst (a) %.2e, (b) %.2e;\n"
           "       unit activations give mt_nf4_dequant's values bit for bit\n", worst_a, worst_b);

    double wa = 0, wb = 0;
    const long bshapes[][2] = {{5, 1}, {7, 37}, {16, 576}, {3, 2048}};
    for (int s = 0; s < 4; s++) {
        long rows = bshapes[s][0], cols = bshapes[s][1];
        unsigned short *w = malloc(rows * cols * 2);
        float *x = malloc(cols * 4), y0[16], y1[16];
        for (long i = 0; i < rows * cols; i++) { float v = normal(); uint32_t u; memcpy(&u, &v, 4); w[i] = (unsigned short)(u >> 16); }
        for (long j = 0; j < cols; j++) x[j] = normal();
        mt_bf16_matvec_with(0, y0, w, 0, rows, cols, x);
        if (kavx) mt_bf16_matvec_with(1, y1, w, 0, rows, cols, x);
        for (long r = 0; r < rows; r++) {
            double exact = 0, mag = 0;
            for (long j = 0; j < cols; j++) { uint32_t u = (uint32_t)w[r * cols + j] << 16; float f; memcpy(&f, &u, 4); exact += (double)f * x[j]; mag += fabs((double)f * x[j]); }
            double eb = fabs(y0[r] - exact) / mag, ea = kavx ? fabs((double)y0[r] - y1[r]) / mag : 0;
            if (eb > wb) wb = eb;
            if (ea > wa) wa = ea;
            CHECK(eb <= 1e-5 && ea <= 1e-6, "bf16 %ldx%ld row %ld: scalar %.9g avx2 %.9g double %.9g", rows, cols, r, y0[r], y1[r], exact);
        }
        free(w); free(x);
    }
    printf("   bf16 (4 shapes): worst (a) %.2e, (b) %.2e\n", wa, wb);
}

// ---- benchmark ------------------------------------------------------------------------------------
// Thread CPU time: the machine is shared (other builds take turns on the cores), and a
// time-shared thread's wall time would count the others' turns.
static double now(void) { struct timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }

#define ARENA (512L << 20)
static uint8_t *arena;
static volatile double sink;

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, long bytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (long i = 0; i < bytes; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t o[4]; _mm256_storeu_si256((__m256i *)o, s);
    return o[0] + o[1] + o[2] + o[3];
}
#endif
static uint64_t sum_scalar(const uint8_t *p, long bytes) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (long i = 0; i < bytes; i += 32) { uint64_t v[4]; memcpy(v, p + i, 32); a += v[0]; b += v[1]; c += v[2]; d += v[3]; }
    return a + b + c + d;
}

static double memread_gbs(void) {
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now();
#if defined(__x86_64__)
        uint64_t s = __builtin_cpu_supports("avx2") ? sum_avx2(arena, ARENA) : sum_scalar(arena, ARENA);
#else
        uint64_t s = sum_scalar(arena, ARENA);
#endif
        double dt = now() - t0;
        sink += (double)s;
        if (ARENA / dt / 1e9 > best) best = ARENA / dt / 1e9;
    }
    return best;
}

// Seconds per call of mt_qdot_matmat_with(kernel, m), hot (one copy) or cold (copies over the arena).
static double time_call(int kernel, int t, long rows, long n, const uint8_t *xq, long xs, long m, float *y, int cold) {
    long mb = row_bytes(t, n) * rows, slot = (mb + 4095) / 4096 * 4096, nslots = cold ? ARENA / slot : 1;
    if (nslots < 2 && cold) nslots = 2;
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        long calls = 0; double t0 = now(), dt;
        do {
            const uint8_t *w = arena + (calls % nslots) * slot;
            mt_qdot_matmat_with(kernel, t, w, row_bytes(t, n), 0, rows, n, xq, xs, m, y, rows);
            calls++;
            dt = now() - t0;
        } while (dt < 0.08 || calls < 3);
        if (dt / calls < best) best = dt / calls;
    }
    return best;
}

static void bench(int kavx) {
    arena = aligned_alloc(4096, ARENA);
    for (long i = 0; i < ARENA; i += 8) { uint64_t v = rnd64(); memcpy(arena + i, &v, 8); }
    double mem = memread_gbs();
    printf("\nBenchmark, one thread. memory read (sum over 512 MB): %.1f GB/s\n", mem);
    printf("GB/s = weight bytes / time per matvec; hot = same matrix again, cold = DRAM (copies over 512 MB);\n"
           "m=4, m=16: time of one mt_qdot_matmat with m activations / time of one matvec (avx2, cold)\n");
    printf("%-12s %-5s %8s | %8s %8s %8s %6s | %7s %7s | %8s\n", "shape", "type", "MB", "scalar", "avx2hot", "avx2cold",
           "%mem", "m=4", "m=16", "us/call");
    const long shapes[][2] = {{1536, 576}, {576, 1536}, {49152, 576}, {1024, 2048}, {2048, 1024}};
    for (int s = 0; s < 5; s++)
        for (int k = 0; k < NTYPES; k++) {
            int t = TYPES[k];
            long rows = shapes[s][0], n = shapes[s][1];
            char shp[32]; snprintf(shp, sizeof shp, "%ldx%ld", rows, n);
            if (n % bsize(t)) { printf("%-12s %-5s   (n %% 256 != 0: not applicable)\n", shp, tname(t)); continue; }
            long mb = row_bytes(t, n) * rows, slot = (mb + 4095) / 4096 * 4096, nslots = ARENA / slot;
            // Fill every slot with the same valid random matrix.
            random_blocks(t, arena, rows * n / bsize(t));
            for (long i = 1; i < nslots; i++) memcpy(arena + i * slot, arena, mb);
            long ab = mt_qdot_activation_bytes(t, n);
            uint8_t *xq = malloc(ab * 16);
            float *x = malloc(n * 4), *y = malloc(sizeof(float) * rows * 16);
            for (int j = 0; j < 16; j++) { for (long i = 0; i < n; i++) x[i] = normal(); mt_qdot_quantize_activation(t, x, xq + j * ab, n); }
            double ts = time_call(0, t, rows, n, xq, ab, 1, y, 1);
            double th = kavx ? time_call(1, t, rows, n, xq, ab, 1, y, 0) : ts;
            double tc = kavx ? time_call(1, t, rows, n, xq, ab, 1, y, 1) : ts;
            double t4 = time_call(kavx, t, rows, n, xq, ab, 4, y, 1), t16 = time_call(kavx, t, rows, n, xq, ab, 16, y, 1);
            printf("%-12s %-5s %8.2f | %8.1f %8.1f %8.1f %5.0f%% | %6.2fx %6.2fx | %8.1f\n", shp, tname(t), mb / 1e6, mb / ts / 1e9,
                   mb / th / 1e9, mb / tc / 1e9, 100 * mb / tc / 1e9 / mem, t4 / tc, t16 / tc, tc * 1e6);
            fflush(stdout);
            free(xq); free(x); free(y);
        }
    // NF4 and bf16 matvec at the expert shapes (cold).
    for (int s = 3; s < 5; s++) {
        long rows = shapes[s][0], cols = shapes[s][1], cnt = rows * cols;
        float *x = malloc(cols * 4), *y = malloc(rows * 4), code16[16], map[256], nested[256];
        for (long j = 0; j < cols; j++) x[j] = normal();
        for (int i = 0; i < 16; i++) code16[i] = -1 + 2 * i / 15.0f;
        for (int i = 0; i < 256; i++) map[i] = (float)unif();
        for (int i = 0; i < 256; i++) nested[i] = (float)unif();
        unsigned char codes[65536];
        for (int i = 0; i < 65536; i++) codes[i] = (unsigned char)rnd64();
        for (int which = 0; which < 2; which++) {
            long mb = which == 0 ? cnt / 2 : cnt * 2, slot = (mb + 4095) / 4096 * 4096, nslots = ARENA / slot;
            double best[2] = {1e30, 1e30};
            for (int k = 0; k <= kavx; k++)
                for (int rep = 0; rep < 3; rep++) {
                    long calls = 0; double t0 = now(), dt;
                    do {
                        const uint8_t *w = arena + (calls % nslots) * slot;
                        if (which == 0) mt_nf4_matvec_with(k, y, w, rows, cols, 0, rows, code16, NULL, codes, map, nested, 0.1f, x);
                        else mt_bf16_matvec_with(k, y, (const unsigned short *)w, 0, rows, cols, x);
                        calls++; dt = now() - t0;
                    } while (dt < 0.08 || calls < 3);
                    if (dt / calls < best[k]) best[k] = dt / calls;
                }
            char shp[32]; snprintf(shp, sizeof shp, "%ldx%ld", rows, cols);
            printf("%-12s %-5s %8.2f | %8.1f %8s %8.1f %5.0f%% |                 | %8.1f\n", shp, which ? "bf16" : "NF4", mb / 1e6,
                   mb / best[0] / 1e9, "", mb / best[kavx] / 1e9, 100 * mb / best[kavx] / 1e9 / mem, best[kavx] * 1e6);
        }
        free(x); free(y);
    }
    free(arena);
}

int main(int argc, char **argv) {
    int doCheck = 1, doBench = 1;
    const char *dir = "Tests/MoETuneTests/Fixtures/gguf";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-bench")) doBench = 0;
        else if (!strcmp(argv[i], "--bench-only")) doCheck = 0;
        else dir = argv[i];
    }
    int kavx = mt_qdot_kernel_supported(1);
    printf("kernel chosen: %s; AVX2 variant %s\n", mt_qdot_kernel(), kavx ? "runs here" : "not supported here (scalar only)");
    if (doCheck) {
        check_fixtures(dir);
        check_activation();
        check_types(kavx);
        check_nf4(kavx);
        printf("%s: %d failure(s)\n", failures ? "FAILED" : "all checks passed", failures);
    }
    if (doBench) bench(kavx);
    return failures ? 1 : 0;
}
