/*
 * Shared by the CPU kernels in csrc/: eight-float vectors, a vectorised exp, and running jobs on
 * pthreads.  Each kernel compiles its inner loops twice (AVX2+FMA and baseline) and picks one at
 * module load; the helpers here are always inlined, so they take the instruction set of the
 * function they are inlined into.
 */
#ifndef SELFTRAIN_CPU_SIMD_H
#define SELFTRAIN_CPU_SIMD_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_BUILD 1
#endif

#define ALWAYS_INLINE __attribute__((always_inline))
#define MAX_THREADS 256

/* Eight floats as one value: GCC/clang turn the arithmetic below into one AVX register op in the
 * AVX2 build and two SSE ops in the baseline one.  Loads and stores go through memcpy (unaligned). */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline ALWAYS_INLINE v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline ALWAYS_INLINE void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

static inline ALWAYS_INLINE v8f splat8(float x) { return (v8f){x, x, x, x, x, x, x, x}; }

/* lanes of a where mask is set, of b elsewhere */
static inline ALWAYS_INLINE v8f select8(v8i mask, v8f a, v8f b) {
    return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask));
}

/* exp(x) for x <= 0 on eight lanes: x = k ln2 + f with |f| <= ln2 / 2, exp(f) by its Taylor series to
 * degree 7 (truncation error < 2e-9 relative, below fp32 rounding), 2^k built in the exponent bits.
 * Below -87 (exp < 1.7e-38, the edge of normal floats) the result is 0.  libm's expf is a scalar
 * call per element; it took most of the attention kernel's time. */
static inline ALWAYS_INLINE v8f exp8_nonpositive(v8f x) {
    const v8f lo = splat8(-87.0f);
    const v8i below = x < lo;
    x = select8(below, lo, x);
    const v8f t = x * splat8(1.44269504088896341f);
    const v8f magic = splat8(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    const v8f k = (t + magic) - magic;
    const v8f f = (x - k * splat8(0.693145751953125f)) - k * splat8(1.42860682030941723212e-6f);
    v8f p = splat8(1.0f / 5040.0f);
    p = p * f + splat8(1.0f / 720.0f);
    p = p * f + splat8(1.0f / 120.0f);
    p = p * f + splat8(1.0f / 24.0f);
    p = p * f + splat8(1.0f / 6.0f);
    p = p * f + splat8(0.5f);
    p = p * f + splat8(1.0f);
    p = p * f + splat8(1.0f);
    const v8i e = (__builtin_convertvector(k, v8i) + 127) << 23;
    return (v8f)((v8i)(p * (v8f)e) & ~below);
}

/* Runs fn(jobs + t * job_size) for t in [0, n): the calling thread takes job 0, one pthread each
 * takes the others; a job whose thread cannot be created runs on the calling thread afterwards.
 * Call with the GIL released. */
static inline void run_jobs(void *(*fn)(void *), void *jobs, size_t job_size, int64_t n) {
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    char *base = (char *)jobs;
    for (int64_t t = 1; t < n; t++) started[t] = pthread_create(&tids[t], NULL, fn, base + t * job_size) == 0;
    fn(base);
    for (int64_t t = 1; t < n; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            fn(base + t * job_size);
    }
}

/* 1 when the AVX2+FMA build of a kernel can run on this CPU */
static inline int cpu_has_avx2_fma(void) {
#ifdef HAVE_AVX2_BUILD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#ifdef Py_PYTHON_H
/* A kernel module's PyInit: creates the module, calls use_avx2() (which points the kernel's
 * function pointers at their AVX2+FMA builds) when the CPU has both, and records which build runs
 * in the module's ISA attribute.  SELFTRAIN_CPU_KERNELS=baseline forces the baseline build (so an
 * AVX2 or AVX-512 machine can test the code an older CPU runs); unset, empty or "best" picks the
 * best build the CPU can run; any other value fails the import, naming the variable. */
static inline PyObject *create_kernel_module(PyModuleDef *def, void (*use_avx2)(void)) {
    const char *want = getenv("SELFTRAIN_CPU_KERNELS");
    int force_baseline = 0;
    if (want && *want && strcmp(want, "best") != 0) {
        if (strcmp(want, "baseline") != 0) {
            PyErr_Format(PyExc_ImportError,
                         "SELFTRAIN_CPU_KERNELS=%s: expected 'baseline' or 'best' (or unset)", want);
            return NULL;
        }
        force_baseline = 1;
    }
    PyObject *m = PyModule_Create(def);
    if (!m) return NULL;
    const char *isa = "baseline";
    if (!force_baseline && cpu_has_avx2_fma()) {
        use_avx2();
        isa = "avx2+fma";
    }
    if (PyModule_AddStringConstant(m, "ISA", isa) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
#endif

#endif
