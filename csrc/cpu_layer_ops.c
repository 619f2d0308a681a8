/*
 * selftrain._cpu_layer_ops: the decoder layer's elementwise steps, fused, for the sampler's CPU fp32
 * forward pass (selftrain/sampler/model.py; the torch functions there are the reference).
 *
 * Why: at 64 decode rows each of these is a few thousand floats, and torch spends more on its
 * per-op overhead and on writing intermediates than on the arithmetic.  Profiled on the 2-core dev
 * machine (SmolLM2-135M, 64 rows), RMSNorm (pow, mean, add, rsqrt, two muls), RoPE (neg, cat, two
 * muls, add, for q and k) and silu(gate) * up came to ~12% of a decode step; here each is one pass.
 * Single-threaded: one call is tens of microseconds, less than starting a thread.
 *
 *   rms_norm(x, w, out, rows, dim, eps)          x, out [rows, dim]; w [dim]
 *       out = w * (x / sqrt(mean(x^2) + eps))    (in fp32, as HF's LlamaRMSNorm for fp32)
 *   rope(qkv, q_out, k_out, cos, sin, positions, rows, row_stride, heads, kv_heads, head_dim)
 *       q (heads x head_dim floats) and k (kv_heads x head_dim, right after q) start each row of
 *       qkv (row_stride floats apart); cos, sin [max_len, head_dim]; positions [rows] int64;
 *       q_out [rows, heads, head_dim] and k_out [rows, kv_heads, head_dim] get the rotated
 *       (rotate-half layout, as HF Llama: x * cos + rotate_half(x) * sin)
 *   silu_mul(gate_up, out, n)                    out[i] = silu(gate_up[i]) * gate_up[n + i]
 * All buffers contiguous fp32 (positions int64), passed as data pointers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>

#include "cpu_simd.h"

static inline ALWAYS_INLINE void rms_norm_impl(const float *x, const float *w, float *out, int64_t rows, int64_t dim,
                                               float eps) {
    const int64_t d8 = dim / 8 * 8;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        v8f acc = splat8(0.0f);
        for (int64_t d = 0; d < d8; d += 8) {
            const v8f v = load8(xr + d);
            acc += v * v;
        }
        float ss = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (int64_t d = d8; d < dim; d++) ss += xr[d] * xr[d];
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        const v8f vi = splat8(inv);
        for (int64_t d = 0; d < d8; d += 8) store8(o + d, load8(w + d) * (load8(xr + d) * vi));
        for (int64_t d = d8; d < dim; d++) o[d] = w[d] * (xr[d] * inv);
    }
}

/* one head: out[d] = x[d] * c[d] + rotate_half(x)[d] * s[d] */
static inline ALWAYS_INLINE void rotate_head(const float *x, const float *c, const float *s, float *out, int64_t hd) {
    const int64_t half = hd / 2;
    int64_t d = 0;
    for (; d + 8 <= half; d += 8) {
        const v8f lo = load8(x + d), hi = load8(x + half + d);
        store8(out + d, lo * load8(c + d) - hi * load8(s + d));
        store8(out + half + d, hi * load8(c + half + d) + lo * load8(s + half + d));
    }
    for (; d < half; d++) {
        out[d] = x[d] * c[d] - x[half + d] * s[d];
        out[half + d] = x[half + d] * c[half + d] + x[d] * s[half + d];
    }
}

static inline ALWAYS_INLINE void rope_impl(const float *qkv, float *q_out, float *k_out, const float *cos_t,
                                           const float *sin_t, const int64_t *positions, int64_t rows,
                                           int64_t row_stride, int64_t heads, int64_t kv_heads, int64_t hd) {
    for (int64_t r = 0; r < rows; r++) {
        const float *c = cos_t + positions[r] * hd, *s = sin_t + positions[r] * hd;
        const float *q = qkv + r * row_stride, *k = q + heads * hd;
        for (int64_t h = 0; h < heads; h++) rotate_head(q + h * hd, c, s, q_out + (r * heads + h) * hd, hd);
        for (int64_t h = 0; h < kv_heads; h++) rotate_head(k + h * hd, c, s, k_out + (r * kv_heads + h) * hd, hd);
    }
}

/* silu(g) = g * sigmoid(g), sigmoid from e = exp(-|g|) <= 1: 1 / (1 + e) for g >= 0, e / (1 + e) below */
static inline ALWAYS_INLINE v8f silu8(v8f g) {
    const v8i neg = g < splat8(0.0f);
    const v8f e = exp8_nonpositive(select8(neg, g, -g));
    const v8f sig = select8(neg, e, splat8(1.0f)) / (splat8(1.0f) + e);
    return g * sig;
}

static inline ALWAYS_INLINE void silu_mul_impl(const float *gate_up, float *out, int64_t n) {
    const float *up = gate_up + n;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8(out + i, silu8(load8(gate_up + i)) * load8(up + i));
    if (i < n) { /* the tail through the same vector code, so every element rounds alike */
        float g[8] = {0}, u[8] = {0}, o[8];
        for (int64_t k = 0; i + k < n; k++) g[k] = gate_up[i + k], u[k] = up[i + k];
        store8(o, silu8(load8(g)) * load8(u));
        for (int64_t k = 0; i + k < n; k++) out[i + k] = o[k];
    }
}

#ifdef HAVE_AVX2_BUILD
#define AVX2 __attribute__((target("avx2,fma")))
AVX2 static void rms_norm_avx2(const float *x, const float *w, float *out, int64_t rows, int64_t dim, float eps) {
    rms_norm_impl(x, w, out, rows, dim, eps);
}
AVX2 static void rope_avx2(const float *qkv, float *q_out, float *k_out, const float *c, const float *s,
                           const int64_t *pos, int64_t rows, int64_t stride, int64_t heads, int64_t kv_heads, int64_t hd) {
    rope_impl(qkv, q_out, k_out, c, s, pos, rows, stride, heads, kv_heads, hd);
}
AVX2 static void silu_mul_avx2(const float *gate_up, float *out, int64_t n) { silu_mul_impl(gate_up, out, n); }
#endif

static void rms_norm_base(const float *x, const float *w, float *out, int64_t rows, int64_t dim, float eps) {
    rms_norm_impl(x, w, out, rows, dim, eps);
}
static void rope_base(const float *qkv, float *q_out, float *k_out, const float *c, const float *s,
                      const int64_t *pos, int64_t rows, int64_t stride, int64_t heads, int64_t kv_heads, int64_t hd) {
    rope_impl(qkv, q_out, k_out, c, s, pos, rows, stride, heads, kv_heads, hd);
}
static void silu_mul_base(const float *gate_up, float *out, int64_t n) { silu_mul_impl(gate_up, out, n); }

static void (*rms_norm_fn)(const float *, const float *, float *, int64_t, int64_t, float) = rms_norm_base;
static void (*rope_fn)(const float *, float *, float *, const float *, const float *, const int64_t *, int64_t,
                       int64_t, int64_t, int64_t, int64_t) = rope_base;
static void (*silu_mul_fn)(const float *, float *, int64_t) = silu_mul_base;

#define PTR(T, v) ((T *)(uintptr_t)(v))

static PyObject *py_rms_norm(PyObject *self, PyObject *args) {
    unsigned long long x, w, out;
    long long rows, dim;
    double eps;
    if (!PyArg_ParseTuple(args, "KKKLLd", &x, &w, &out, &rows, &dim, &eps)) return NULL;
    if (rows < 0 || dim < 1) {
        PyErr_SetString(PyExc_ValueError, "rms_norm: need rows >= 0 and dim >= 1");
        return NULL;
    }
    rms_norm_fn(PTR(const float, x), PTR(const float, w), PTR(float, out), rows, dim, (float)eps);
    Py_RETURN_NONE;
}

static PyObject *py_rope(PyObject *self, PyObject *args) {
    unsigned long long qkv, q_out, k_out, c, s, pos;
    long long rows, stride, heads, kv_heads, hd;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLLL", &qkv, &q_out, &k_out, &c, &s, &pos, &rows, &stride, &heads,
                          &kv_heads, &hd))
        return NULL;
    if (rows < 0 || heads < 1 || kv_heads < 1 || hd < 2 || hd % 2 || stride < (heads + kv_heads) * hd) {
        PyErr_SetString(PyExc_ValueError, "rope: bad sizes (head_dim must be even, row_stride >= q + k)");
        return NULL;
    }
    rope_fn(PTR(const float, qkv), PTR(float, q_out), PTR(float, k_out), PTR(const float, c), PTR(const float, s),
            PTR(const int64_t, pos), rows, stride, heads, kv_heads, hd);
    Py_RETURN_NONE;
}

static PyObject *py_silu_mul(PyObject *self, PyObject *args) {
    unsigned long long gate_up, out;
    long long n;
    if (!PyArg_ParseTuple(args, "KKL", &gate_up, &out, &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "silu_mul: n must be >= 0");
        return NULL;
    }
    silu_mul_fn(PTR(const float, gate_up), PTR(float, out), n);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"rms_norm", py_rms_norm, METH_VARARGS, "rms_norm(x, w, out, rows, dim, eps); see the file header."},
    {"rope", py_rope, METH_VARARGS,
     "rope(qkv, q_out, k_out, cos, sin, positions, rows, row_stride, heads, kv_heads, head_dim)."},
    {"silu_mul", py_silu_mul, METH_VARARGS, "silu_mul(gate_up, out, n): out = silu(gate) * up."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_cpu_layer_ops",
    "RMSNorm, RoPE and silu(gate) * up fused for the sampler's CPU fp32 forward pass.", -1, methods,
};

#ifdef HAVE_AVX2_BUILD
static void use_avx2(void) {
    rms_norm_fn = rms_norm_avx2;
    rope_fn = rope_avx2;
    silu_mul_fn = silu_mul_avx2;
}
#else
static void use_avx2(void) {}
#endif

PyMODINIT_FUNC PyInit__cpu_layer_ops(void) { return create_kernel_module(&moduledef, use_avx2); }
