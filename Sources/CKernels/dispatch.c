#include "dispatch.h"
#include "ckernels.h"

static int requested[MT_KERNEL_FILES] = {-1, -1, -1, -1};
static int chosen[MT_KERNEL_FILES] = {-1, -1, -1, -1};

void mt_set_kernels(int nf4, int bf16, int qdot, int lora) {
    const int want[MT_KERNEL_FILES] = {nf4, bf16, qdot, lora};
    for (int i = 0; i < MT_KERNEL_FILES; i++) {
        __atomic_store_n(&requested[i], want[i], __ATOMIC_RELAXED);
        __atomic_store_n(&chosen[i], -1, __ATOMIC_RELAXED);
    }
}

int mt_choose_kernel(int which, int (*supported)(int)) {
    int k = __atomic_load_n(&chosen[which], __ATOMIC_RELAXED);
    if (k >= 0) return k;
    k = supported(2) ? 2 : (supported(1) ? 1 : 0);
    int want = __atomic_load_n(&requested[which], __ATOMIC_RELAXED);
    if (want >= 0 && supported(want)) k = want;
    __atomic_store_n(&chosen[which], k, __ATOMIC_RELAXED);
    return k;
}

int mt_x86_level_supported(int kernel) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (kernel == 2) return __builtin_cpu_supports("avx512f") ? 1 : 0;
    if (kernel == 1) return __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
    return kernel == 0;
}
