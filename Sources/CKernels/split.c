// The decoder's products split by output rows over the pool's threads (pool.c), each part a
// contiguous range of weight rows for every activation row. Written in C so that a product
// allocates nothing: Swift closures handed to a thread pool are boxed on the heap.
#include "ckernels.h"

enum { ROWS_F32, ROWS_QDOT, ROWS_NF4, ROWS_BF16 };

typedef struct {
    int kind;
    long rows, cols, m, per;        // weight [rows, cols], m activation rows, rows a part
    const void *w;                  // the weight (fp32, ggml blocks, NF4 codes, bf16)
    long rowBytes;                  // ggml: bytes a row
    int type;                       // ggml type
    const void *x;                  // activations: fp32 [m, cols], or ggml's quantized rows
    long xStride;                   // floats (fp32) or bytes (quantized) between rows of x
    float *y;                       // [m, ldy]
    long ldy;
    int accumulate;                 // fp32 only
    const float *code16, *absmax, *map, *nested;   // NF4
    const unsigned char *scaleCodes;
    float offset;
} row_job;

static void run_part(void *context, long part) {
    const row_job *j = context;
    long r0 = part * j->per, r1 = r0 + j->per < j->rows ? r0 + j->per : j->rows;
    if (r0 >= r1) return;
    switch (j->kind) {
    case ROWS_F32:
        mt_rows_f32(j->w, r0, r1, j->cols, j->x, j->m, j->xStride, j->y + r0, j->ldy, j->accumulate);
        break;
    case ROWS_QDOT:
        mt_qdot_matmat(j->type, j->w, j->rowBytes, r0, r1, j->cols, j->x, j->xStride, j->m, j->y + r0, j->ldy);
        break;
    case ROWS_NF4:
        for (long i = 0; i < j->m; i++)
            mt_nf4_matvec(j->y + i * j->ldy + r0, j->w, j->rows, j->cols, r0, r1, j->code16, j->absmax, j->scaleCodes,
                          j->map, j->nested, j->offset, (const float *)j->x + i * j->xStride);
        break;
    case ROWS_BF16:
        for (long i = 0; i < j->m; i++)
            mt_bf16_matvec(j->y + i * j->ldy + r0, j->w, r0, r1, j->cols, (const float *)j->x + i * j->xStride);
        break;
    }
}

// Parts of at least about 64 KiB of weight each, one per thread at most.
static void run_job(row_job *j, long bytesPerRow, int threads) {
    long minRows = bytesPerRow > 0 ? (65536 + bytesPerRow - 1) / bytesPerRow : 1;
    long parts = j->rows / (minRows > 0 ? minRows : 1);
    if (parts > threads) parts = threads;
    if (parts < 1) parts = 1;
    j->per = (j->rows + parts - 1) / parts;
    mt_pool_run(parts, threads, run_part, j);
}

void mt_split_rows_f32(int threads, const float *w, long rows, long cols, const float *x, long m, long ldx, float *y,
                       long ldy, int accumulate) {
    row_job j = {.kind = ROWS_F32, .rows = rows, .cols = cols, .m = m, .w = w, .x = x, .xStride = ldx, .y = y,
                 .ldy = ldy, .accumulate = accumulate};
    run_job(&j, cols * 4, threads);
}

void mt_split_qdot(int threads, int type, const void *w, long rowBytes, long rows, long cols, const void *xq,
                   long xqStride, long m, float *y, long ldy) {
    row_job j = {.kind = ROWS_QDOT, .rows = rows, .cols = cols, .m = m, .w = w, .rowBytes = rowBytes, .type = type,
                 .x = xq, .xStride = xqStride, .y = y, .ldy = ldy};
    run_job(&j, rowBytes, threads);
}

void mt_split_nf4(int threads, const unsigned char *packed, long rows, long cols, const float *code16,
                  const float *absmax, const unsigned char *scaleCodes, const float *map, const float *nested,
                  float offset, const float *x, long m, long ldx, float *y, long ldy) {
    row_job j = {.kind = ROWS_NF4, .rows = rows, .cols = cols, .m = m, .w = packed, .x = x, .xStride = ldx, .y = y,
                 .ldy = ldy, .code16 = code16, .absmax = absmax, .map = map, .nested = nested,
                 .scaleCodes = scaleCodes, .offset = offset};
    run_job(&j, cols / 2, threads);
}

void mt_split_bf16(int threads, const unsigned short *w, long rows, long cols, const float *x, long m, long ldx,
                   float *y, long ldy) {
    row_job j = {.kind = ROWS_BF16, .rows = rows, .cols = cols, .m = m, .w = w, .x = x, .xStride = ldx, .y = y,
                 .ldy = ldy};
    run_job(&j, cols * 2, threads);
}
