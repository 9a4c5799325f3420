// cblas.h from Debian's libopenblas-dev, plus the two entry points of OpenBLAS's
// DYNAMIC_ARCH dispatcher that moe-tune uses to pick the AVX-512 kernels after the
// library has loaded, and the one that stops its thread server (see
// Sources/MoECore/Layers/BLAS.swift).
#include <cblas.h>

void gotoblas_dynamic_init(void);
void gotoblas_dynamic_quit(void);
// Only OpenBLAS's threaded builds define it (its serial build has no thread server): weak,
// so a serial libopenblas links and loads, and moe_blas_stop_threads does nothing there.
void blas_thread_shutdown_(void) __attribute__((weak));
static inline void moe_blas_stop_threads(void) {
    if (blas_thread_shutdown_) blas_thread_shutdown_();
}
