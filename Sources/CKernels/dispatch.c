#include "dispatch.h"
#include <stdlib.h>
#include <string.h>

int mt_choose_kernel(int *chosen, const char *env_name, int (*supported)(int)) {
    int k = __atomic_load_n(chosen, __ATOMIC_RELAXED);
    if (k >= 0) return k;
    k = supported(2) ? 2 : (supported(1) ? 1 : 0);
    const char *env = getenv(env_name);
    if (env) {
        int want = strcmp(env, "avx512") == 0 ? 2 : (strcmp(env, "avx2") == 0 ? 1 : (strcmp(env, "scalar") == 0 ? 0 : -1));
        if (want >= 0 && supported(want)) k = want;
    }
    __atomic_store_n(chosen, k, __ATOMIC_RELAXED);
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
