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

#ifdef __cplusplus
}
#endif

#endif
