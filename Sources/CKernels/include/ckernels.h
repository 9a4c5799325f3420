// Element-wise kernels of the training step written in C so that the compiler
// vectorises them (Swift's generic SIMD types do not lower to vector code well).
// exp uses a polynomial (Cephes expf coefficients) with relative error about 1e-7;
// inputs are clamped to [-87.3, 88.37], NaN propagates.
#ifndef CKERNELS_H
#define CKERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

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

/// Pre-packed GEMM (packed_gemm.c). A B[k, n] operand, element (kk, j) at b[kk * strideK +
/// j * strideN], packed into panels of 16 columns (K rows of 16 floats each, the last panel
/// zero-padded): mt_packed_size(k, n) floats. W[n, k] of x · W^T is strideK = 1, strideN = k;
/// W of dy · W is strideK = n, strideN = 1.
long mt_packed_size(long k, long n);
void mt_pack_b(float *dst, const float *b, long k, long n, long strideK, long strideN);
/// C[m, n] (+)= A[m, k] (row stride lda) · B (packed); row stride of C ldc. Allocates nothing.
void mt_packed_gemm(long m, long n, long k, const float *a, long lda, const float *packed, float *c, long ldc,
                    int accumulate);
/// Which kernel runs: "avx2" (6 x 16, FMA) or "scalar".
const char *mt_packed_kernel(void);
/// Whether kernel 0 (scalar) or 1 (AVX2+FMA) runs on this CPU.
int mt_packed_kernel_supported(int kernel);
/// mt_packed_gemm with a given kernel; -1 when this CPU lacks it.
int mt_packed_gemm_with(int kernel, long m, long n, long k, const float *a, long lda, const float *packed, float *c,
                        long ldc, int accumulate);

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

#ifdef __cplusplus
}
#endif

#endif
