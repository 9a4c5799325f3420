// Run-time choice of a kernel variant, shared by the kernel files (not part of the public API).
#ifndef MT_DISPATCH_H
#define MT_DISPATCH_H

// The variant a kernel file's entry points use, chosen once and kept in *chosen (start it at
// -1): the best variant `supported` accepts of 2 (AVX-512), 1 (AVX2) and 0 (scalar), unless the
// environment variable env_name names one the CPU supports ("avx512", "avx2", "scalar"), to
// measure them side by side.
int mt_choose_kernel(int *chosen, const char *env_name, int (*supported)(int));

// Whether the CPU runs variant `kernel`: 2 = AVX-512F, 1 = AVX2, 0 = scalar (always).
int mt_x86_level_supported(int kernel);

#endif
