// Run-time choice of a kernel variant, shared by the kernel files (not part of the public API).
#ifndef MT_DISPATCH_H
#define MT_DISPATCH_H

// The kernel files whose variant mt_set_kernels (ckernels.h) may choose.
enum { MT_KERNEL_NF4, MT_KERNEL_BF16, MT_KERNEL_QDOT, MT_KERNEL_LORA, MT_KERNEL_FILES };

// The variant kernel file `which` uses, chosen on first use and kept until mt_set_kernels is
// called again: the one mt_set_kernels asked for if `supported` accepts it, else the best
// `supported` accepts of 2 (AVX-512), 1 (AVX2) and 0 (scalar).
int mt_choose_kernel(int which, int (*supported)(int));

// Whether the CPU runs variant `kernel`: 2 = AVX-512F, 1 = AVX2, 0 = scalar (always).
int mt_x86_level_supported(int kernel);

#endif
