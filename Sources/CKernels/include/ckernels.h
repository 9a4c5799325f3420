// Element-wise kernels of the training step written in C so that the compiler
// vectorises them (Swift's generic SIMD types do not lower to vector code well).
// exp uses a polynomial (Cephes expf coefficients) with relative error about 1e-7;
// inputs are clamped to [-87.3, 88.37], NaN propagates.
#ifndef CKERNELS_H
#define CKERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

/// The variants of the kernel files that have several, chosen once at start-up (Swift's
/// RunOptions.install, from MOE_TUNE_NF4_KERNEL, MOE_TUNE_BF16_KERNEL, MOE_TUNE_QDOT_KERNEL,
/// MOE_TUNE_LORA_KERNEL): 2 = AVX-512, 1 = AVX2, 0 = scalar, -1 = the best this CPU runs (also
/// the choice of a variant this CPU lacks). Unset: the best. Later calls reset the choice.
void mt_set_kernels(int nf4, int bf16, int qdot, int lora);

/// x[i] = exp(x[i] - shift) for i < n; returns the sum.
float mt_exp_shift_inplace(float *x, long n, float shift);
/// sum of exp(x[i] - shift) for i < n.
float mt_sum_exp_shift(const float *x, long n, float shift);
/// max of x[0..n).
float mt_max(const float *x, long n);
/// out = silu(g) * u.
void mt_swiglu_forward(float *out, const float *g, const float *u, long n);
/// With s = sigmoid(g): dg = d * u * s * (1 + g (1 - s)), du = d * g * s (dg may alias d).
void mt_swiglu_backward(float *dg, float *du, const float *d, const float *g, const float *u, long n);

/// A task of a parallel region: fn(ctx, i) for iteration i.
typedef void (*mt_task_fn)(void *ctx, long i);
/// Runs fn(ctx, 0..<count) on the caller and up to threads - 1 pool threads (pool.c; started
/// on first use, spinning briefly then sleeping between regions), each iteration exactly
/// once, and returns when all are done. Allocates nothing. Serially on the caller when
/// threads <= 1, count == 1, count >= 2^23, or another region is running (returns 0 then;
/// 1 when shared or when count <= 0, which runs nothing).
int mt_pool_run(long count, int threads, mt_task_fn fn, void *ctx);

/// The decoder's products with the weight's output rows split over `threads` pool threads
/// (split.c; parts of at least 64 KiB of weight; threads <= 1: on the caller). Each writes
/// y [m, ldy] for all `rows` rows: fp32 (mt_rows_f32, accumulate adds to y), ggml blocks with
/// quantized activations (mt_qdot_matmat), NF4 and bf16 (their matvec per activation row).
void mt_split_rows_f32(int threads, const float *w, long rows, long cols, const float *x, long m, long ldx, float *y,
                       long ldy, int accumulate);
void mt_split_qdot(int threads, int type, const void *w, long rowBytes, long rows, long cols, const void *xq,
                   long xqStride, long m, float *y, long ldy);
void mt_split_nf4(int threads, const unsigned char *packed, long rows, long cols, const float *code16,
                  const float *absmax, const unsigned char *scaleCodes, const float *map, const float *nested,
                  float offset, const float *x, long m, long ldx, float *y, long ldy);
void mt_split_bf16(int threads, const unsigned short *w, long rows, long cols, const float *x, long m, long ldx,
                   float *y, long ldy);

/// One query row's attention over a KV cache (attention_decode.c): for each of `heads` heads
/// (KV head head / group), scores q_h · k_j * scale for j in first...pos (k_j at keys + j *
/// kvDim), softmax (a sink logit per head, if given, joins the normalisation only), out_h =
/// sum_j p_j v_j. scores: room for pos + 1 floats. AVX2+FMA or scalar, chosen at run time.
void mt_attention_decode(float *out, const float *q, const float *keys, const float *values, long first, long pos,
                         long heads, long group, long headDim, long kvDim, float scale, float *scores,
                         const float *sinks);
int mt_attention_decode_supported(int kernel);
int mt_attention_decode_with(int kernel, float *out, const float *q, const float *keys, const float *values, long first,
                             long pos, long heads, long group, long headDim, long kvDim, float scale, float *scores,
                             const float *sinks);

/// Few-row products against fp32 weight rows (rows_f32.c): y[i * ldy + (r - r0)] (+)= x[i, :]
/// · w[r, :] for rows r in [r0, r1) of w [*, k] and i < m rows of x (row stride ldx). Each
/// weight row is read once for all m rows (the decoder's steps, m up to about 16). AVX2+FMA
/// or scalar, chosen at run time (the scalar loop is the definition tests compare with).
void mt_rows_f32(const float *w, long r0, long r1, long k, const float *x, long m, long ldx, float *y, long ldy,
                 int accumulate);
/// Whether kernel 0 (scalar) or 1 (AVX2+FMA) runs on this CPU.
int mt_rows_f32_kernel_supported(int kernel);
/// mt_rows_f32 with a given kernel; -1 when this CPU lacks it.
int mt_rows_f32_with(int kernel, const float *w, long r0, long r1, long k, const float *x, long m, long ldx, float *y,
                     long ldy, int accumulate);

/// NF4 dequantization of values lo..<hi of a weight flattened row-major (blocks of 64,
/// two codes per byte, the even index in the high nibble): dst[i - lo] = code[nibble(i)] *
/// scale(i / 64). scale(b) = absmax[b] when absmax is given, else (double quantization)
/// map[scaleCodes[b]] * nested[b / 256] + offset, each product and sum rounded to fp32 as
/// bitsandbytes computes it. Vectorised (AVX-512: one 16-entry permute; AVX2: two 8-entry
/// permutes and a blend), chosen at run time; bit-identical to the scalar loop.
void mt_nf4_dequant(float *dst, const unsigned char *packed, long lo, long hi, const float *code16,
                    const float *absmax, const unsigned char *scaleCodes, const float *map,
                    const float *nested, float offset);
/// Which mt_nf4_dequant kernel runs on this CPU: "avx512", "avx2" or "scalar".
const char *mt_nf4_kernel(void);
/// Whether kernel 0 (scalar), 1 (AVX2) or 2 (AVX-512) runs on this CPU.
int mt_nf4_kernel_supported(int kernel);
/// mt_nf4_dequant with a given kernel (tests compare them); -1 when this CPU lacks it.
int mt_nf4_dequant_with(int kernel, float *dst, const unsigned char *packed, long lo, long hi, const float *code16,
                        const float *absmax, const unsigned char *scaleCodes, const float *map,
                        const float *nested, float offset);

/// bfloat16 -> fp32 (bf16.c): dst[i] = the fp32 whose top 16 bits are src[i] and low 16 bits
/// zero; exact. Vectorised (AVX-512: 32 values a step; AVX2: 16), chosen at run time;
/// bit-identical to the scalar loop.
void mt_bf16_widen(float *dst, const unsigned short *src, long n);
/// Which mt_bf16_widen kernel runs on this CPU: "avx512", "avx2" or "scalar".
const char *mt_bf16_kernel(void);
/// Whether kernel 0 (scalar), 1 (AVX2) or 2 (AVX-512) runs on this CPU.
int mt_bf16_kernel_supported(int kernel);
/// mt_bf16_widen with a given kernel (tests compare them); -1 when this CPU lacks it.
int mt_bf16_widen_with(int kernel, float *dst, const unsigned short *src, long n);
/// Native bf16 arithmetic on this CPU (CPUID): bit 0 AVX512_BF16, bit 1 AMX-BF16; 0 if neither.
int mt_cpu_native_bf16(void);

/// Skinny products of LoRA adapters (lora_gemm.c), cblas row-major semantics:
/// C[m, n] = alpha * op(A) op(B) + beta * C, op(A) [m, k], op(B) [k, n]; transA/transB 1 =
/// transposed. beta = 0 never reads C. Packs at most 4096 floats of B on the stack; allocates
/// nothing. Meant for products with the rank (<= 64) as one dimension.
void mt_lora_gemm(int transA, int transB, long m, long n, long k, float alpha, const float *a, long lda,
                  const float *b, long ldb, float beta, float *c, long ldc);
/// Which kernel runs: "avx2" or "scalar" (MOE_TUNE_LORA_KERNEL=scalar forces it).
const char *mt_lora_kernel(void);
/// Whether kernel 0 (scalar) or 1 (AVX2+FMA) runs on this CPU.
int mt_lora_kernel_supported(int kernel);
/// mt_lora_gemm with a given kernel; -1 when this CPU lacks it.
int mt_lora_gemm_with(int kernel, int transA, int transB, long m, long n, long k, float alpha, const float *a,
                      long lda, const float *b, long ldb, float beta, float *c, long ldc);

/// Products of ggml-quantized weights with activations in the weights' own blocks (qdot.c,
/// qdot_k.c): the activation is quantized once to 8 bits, each block's product is an integer
/// sum, blocks are scaled and added in fp32 (ggml's CPU approach); no row is widened to fp32.
/// `type` is ggml's number: Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8 (blocks of 32)
/// and Q4_K = 12, Q5_K = 13, Q6_K = 14 (super-blocks of 256), the layouts GGMLDequantize.swift
/// reads; n (values per row) must be a multiple of the block. Activation layouts (activation j
/// of n values): for the 32-value types n / 32 blocks of 68 bytes: fp32 d[8] (one for each 4
/// values), fp32 s = sum over g of d[g] * (sum of q over values 4g..4g+3), int8 q[32]; for the K
/// types n / 256 blocks of 292 bytes: fp32 d, int8 q[256], int16 sums of q over each 16 values
/// [16] (native byte order); one quantized activation serves every type of its family (all
/// 32-value types, or all K types). Value i is d * q[i], d = max|x| / 127 over its 4 values (32
/// types) or its block of 256 (K types, ggml's q8_K), q = round-to-nearest-even(x * 127 /
/// max|x|), in [-127, 127] (ggml: q8_0 one fp16 d per 32 values and round half away from zero;
/// q8_K the same as here). Variants: scalar
/// (the definition) and AVX2+FMA+F16C, chosen at run time (MOE_TUNE_QDOT_KERNEL=scalar|avx2
/// forces one). No alignment is needed anywhere; nothing is allocated; every function may run
/// on many threads at once (on disjoint outputs).
///
/// Bytes of the quantized activation of n values for weights of `type`; -1 when the type is
/// not one of the eight or n not a multiple of its block.
long mt_qdot_activation_bytes(int type, long n);
/// Quantizes x[0..n) (finite) for weights of `type` into dst (mt_qdot_activation_bytes bytes,
/// any alignment). Does nothing for a type or n mt_qdot_activation_bytes refuses.
void mt_qdot_quantize_activation(int type, const float *x, void *dst, long n);
/// The activation to about 16 bits, as two of mt_qdot_quantize_activation's (2 *
/// mt_qdot_activation_bytes bytes): the first x quantized, the second the rounding's residual
/// (x - the first's values, per block) quantized the same way. A row's products with the two,
/// added, differ from its product with x by the residual's rounding (about 1/254 of the
/// first's); matmat reads the row once for both.
void mt_qdot_quantize_activation2(int type, const float *x, void *dst, long n);
/// One weight row (n values of `type` at wrow) times the quantized activation xq: the sum over
/// blocks, in order, of (dw * dx) * S (32-value types: the sum over the block's 8 groups of 4
/// values of (dw * dx_g) * S_g; + mw * s for Q4_1/Q5_1; - (dmin * dx) * sum over the 8
/// sub-blocks of m_j * (sum of qx in j) for Q4_K/Q5_K), S = sum(qw * qx) in integers with qw
/// the block's integer values (Q4_0 q - 8, Q5_0 q - 16; K types: each sub-block's q, Q6_K's
/// q - 32, times its integer scale), fp32 across blocks. NaN for a type or n refused.
float mt_qdot_row(int type, long n, const void *wrow, const void *xq);
/// y[r - r0] = row r · x for r in [r0, r1); row r at w + r * rowBytes (rowBytes >= the bytes of
/// n values). Does nothing for a type or n mt_qdot_activation_bytes refuses.
void mt_qdot_matvec(int type, const void *w, long rowBytes, long r0, long r1, long n, const void *xq, float *y);
/// m activations (activation j at xq + j * xqStride bytes): y[j * ldy + (r - r0)] = row r ·
/// activation j. Each row is read from memory once for all m (4 activations at a time, the row
/// in L1 for the next 4); a result equals mt_qdot_matvec's for that activation bit for bit.
void mt_qdot_matmat(int type, const void *w, long rowBytes, long r0, long r1, long n, const void *xq, long xqStride,
                    long m, float *y, long ldy);
/// Which kernel the mt_qdot_*, mt_nf4_matvec and mt_bf16_matvec products use: "avx2" or "scalar".
const char *mt_qdot_kernel(void);
/// Whether kernel 0 (scalar) or 1 (AVX2+FMA+F16C) runs on this CPU (no AVX-512 variant: 2 is 0).
int mt_qdot_kernel_supported(int kernel);
/// mt_qdot_row with a given kernel into *out (tests compare them); -1 when this CPU lacks it or
/// the type or n is refused.
int mt_qdot_row_with(int kernel, int type, long n, const void *wrow, const void *xq, float *out);
/// mt_qdot_matmat with a given kernel; -1 when this CPU lacks it or the type or n is refused.
int mt_qdot_matmat_with(int kernel, int type, const void *w, long rowBytes, long r0, long r1, long n, const void *xq,
                        long xqStride, long m, float *y, long ldy);

/// NF4 matrix-vector product straight from the 4-bit codes (qdot.c), the weight [rows, cols] in
/// mt_nf4_dequant's layout and arguments: y[r - r0] = sum_j dequant(r, j) * x[j] for r in
/// [r0, r1), computed per 64-value block (or the part of one in the row) as scale * sum(code *
/// x), the scale exactly as mt_nf4_dequant computes it; fp32. Nothing for an empty or
/// out-of-range [r0, r1). AVX2: the two-permute lookup of mt_nf4_dequant, FMA.
void mt_nf4_matvec(float *y, const unsigned char *packed, long rows, long cols, long r0, long r1,
                   const float *code16, const float *absmax, const unsigned char *scaleCodes, const float *map,
                   const float *nested, float offset, const float *x);
/// mt_nf4_matvec with a given kernel (mt_qdot_kernel_supported); -1 when this CPU lacks it.
int mt_nf4_matvec_with(int kernel, float *y, const unsigned char *packed, long rows, long cols, long r0, long r1,
                       const float *code16, const float *absmax, const unsigned char *scaleCodes, const float *map,
                       const float *nested, float offset, const float *x);
/// bf16 matrix-vector product (qdot.c), row r at w + r * cols: y[r - r0] = sum_j bf16(w[r, j]) *
/// x[j] for r in [r0, r1), widened on the fly; fp32 (AVX2: 4 FMA accumulators of 8).
void mt_bf16_matvec(float *y, const unsigned short *w, long r0, long r1, long cols, const float *x);
/// mt_bf16_matvec with a given kernel (mt_qdot_kernel_supported); -1 when this CPU lacks it.
int mt_bf16_matvec_with(int kernel, float *y, const unsigned short *w, long r0, long r1, long cols, const float *x);

#ifdef __cplusplus
}
#endif

#endif
