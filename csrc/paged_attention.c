/*
 * selftrain._paged_attention: decode attention over the paged KV cache, on CPU, in fp32.
 *
 * Why it exists: with one query token per row, attention is bound by reading K and V.  The torch
 * path first gathers every row's blocks into a contiguous [rows, context, kv_heads, head_dim]
 * tensor (a copy as large as all the K/V it then reads again), which measured ~40% of a decode
 * step at 64 rows x 400 tokens.  This kernel reads each row's K/V in place, block by block, once,
 * with an online softmax, so nothing is copied.  Rows that share prompt blocks (the n samples of a
 * prompt, adjacent in the batch) are handled by the same thread one after the other, so the
 * shared blocks are still in its cache for the siblings.
 *
 * Layout (the sampler's pool, the one flash-attn's paged kernels also read):
 *   q, out   [rows, heads, head_dim]                     contiguous fp32
 *   k, v     [num_blocks, block_size, kv_heads, head_dim] contiguous fp32 (one layer)
 *   tables   [rows, width] int64: block ids of each row, in position order
 *   ctx      [rows] int64: keys visible to the row's query (positions 0 .. ctx-1)
 *   window   0, or a sliding window: only the last `window` positions are visible
 * Query head h reads KV head h / (heads / kv_heads) (grouped-query attention).
 *
 * Work is split into contiguous row ranges of about equal key counts over `threads` pthreads; the
 * GIL is released during the call.  The inner loops are compiled twice (AVX2+FMA and baseline)
 * and picked at module load by the CPU's features (`ISA` says which).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdlib.h>

#include "cpu_simd.h"

typedef struct {
    const float *q, *k, *v;
    float *out;
    const int64_t *tables, *ctx;
    int64_t width, heads, kv_heads, head_dim, block_size, window;
    float scale;
    int64_t row_begin, row_end;
    int failed;
} job_t;

static inline ALWAYS_INLINE float dot(const float *a, const float *b, int64_t n) {
    v8f s = splat8(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) s += load8(a + i) * load8(b + i);
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i] * b[i];
    return tail + ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* The lane sums of eight vectors, as one vector: out[j] = sum of a[j]'s lanes.  A shuffle tree
 * (three rounds of pairing) instead of eight separate horizontal sums. */
#if defined(__clang__) || __GNUC__ >= 12
#define SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif
static inline ALWAYS_INLINE v8f lane_sums8(const v8f *a) {
    v8f t[4], u[2];
    for (int j = 0; j < 4; j++)
        t[j] = SHUFFLE8(a[2 * j], a[2 * j + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               SHUFFLE8(a[2 * j], a[2 * j + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int j = 0; j < 2; j++)
        u[j] = SHUFFLE8(t[2 * j], t[2 * j + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               SHUFFLE8(t[2 * j], t[2 * j + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return SHUFFLE8(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE8(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* s[t] = scale * <q, k_t> for the nt keys k_t = k + t * stride; eight keys at a time when D allows */
static inline ALWAYS_INLINE void key_scores(float *s, const float *q, const float *k, int64_t stride, int64_t nt,
                                            int64_t D, float scale) {
    int64_t t = 0;
    if (D % 8 == 0) {
        for (; t + 8 <= nt; t += 8) {
            v8f a[8];
            for (int j = 0; j < 8; j++) a[j] = splat8(0.0f);
            for (int64_t d = 0; d < D; d += 8) {
                const v8f qd = load8(q + d);
                for (int j = 0; j < 8; j++) a[j] += qd * load8(k + (t + j) * stride + d);
            }
            store8(s + t, lane_sums8(a) * splat8(scale));
        }
    }
    for (; t < nt; t++) s[t] = dot(q, k + t * stride, D) * scale;
}

/* acc = acc * alpha + sum_t p[t] * v_t over D floats, v_t = v + t * stride; 64 floats at a time
 * are kept in registers across all the keys */
static inline ALWAYS_INLINE void accumulate_values(float *acc, float alpha, const float *p, const float *v,
                                                   int64_t stride, int64_t nt, int64_t D) {
    int64_t d0 = 0;
    const v8f va = splat8(alpha);
    for (; d0 + 64 <= D; d0 += 64) {
        v8f a[8];
        for (int j = 0; j < 8; j++) a[j] = load8(acc + d0 + 8 * j) * va;
        for (int64_t t = 0; t < nt; t++) {
            const v8f pt = splat8(p[t]);
            const float *vt = v + t * stride + d0;
            for (int j = 0; j < 8; j++) a[j] += pt * load8(vt + 8 * j);
        }
        for (int j = 0; j < 8; j++) store8(acc + d0 + 8 * j, a[j]);
    }
    for (; d0 + 8 <= D; d0 += 8) {
        v8f a = load8(acc + d0) * va;
        for (int64_t t = 0; t < nt; t++) a += splat8(p[t]) * load8(v + t * stride + d0);
        store8(acc + d0, a);
    }
    for (; d0 < D; d0++) {
        float a = acc[d0] * alpha;
        for (int64_t t = 0; t < nt; t++) a += p[t] * v[t * stride + d0];
        acc[d0] = a;
    }
}

static inline ALWAYS_INLINE void attend_rows_impl(job_t *job, float *acc, float *row_max, float *row_sum, float *scores) {
    const int64_t H = job->heads, KVH = job->kv_heads, D = job->head_dim, BS = job->block_size;
    const int64_t group = H / KVH, token_stride = KVH * D, block_stride = BS * KVH * D;
    const int64_t padded = (BS + 7) / 8 * 8; /* one head's scores, rounded up to whole vectors */
    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        const int64_t n = job->ctx[r];
        const int64_t first = (job->window > 0 && n > job->window) ? n - job->window : 0;
        const float *q = job->q + r * H * D;
        const int64_t *table = job->tables + r * job->width;
        for (int64_t h = 0; h < H; h++) {
            row_max[h] = -INFINITY;
            row_sum[h] = 0.0f;
        }
        memset(acc, 0, sizeof(float) * H * D);
        for (int64_t b = first / BS; b * BS < n; b++) {
            const int64_t t0 = b * BS > first ? b * BS : first;
            const int64_t nt = ((b + 1) * BS < n ? (b + 1) * BS : n) - t0;
            const float *kb = job->k + table[b] * block_stride + (t0 - b * BS) * token_stride;
            const float *vb = job->v + table[b] * block_stride + (t0 - b * BS) * token_stride;
            if ((b + 1) * BS < n) {
                /* blocks sit at random places in the pool: ask for the next one while this one is
                 * computed, so its first reads do not wait on memory */
                const char *nk = (const char *)(job->k + table[b + 1] * block_stride);
                const char *nv = (const char *)(job->v + table[b + 1] * block_stride);
                for (int64_t off = 0; off < block_stride * (int64_t)sizeof(float); off += 64) {
                    __builtin_prefetch(nk + off);
                    __builtin_prefetch(nv + off);
                }
            }
            for (int64_t kvh = 0; kvh < KVH; kvh++) {
                const int64_t h0 = kvh * group;
                /* scores of the group's query heads against this block's keys (in L1 after the first) */
                for (int64_t g = 0; g < group; g++)
                    key_scores(scores + g * padded, q + (h0 + g) * D, kb + kvh * D, token_stride, nt, D, job->scale);
                for (int64_t g = 0; g < group; g++) {
                    const int64_t h = h0 + g;
                    float *sg = scores + g * padded;
                    float block_max = -INFINITY;
                    for (int64_t t = 0; t < nt; t++) block_max = sg[t] > block_max ? sg[t] : block_max;
                    const float new_max = block_max > row_max[h] ? block_max : row_max[h];
                    const float alpha = row_max[h] == -INFINITY ? 0.0f : expf(row_max[h] - new_max);
                    for (int64_t t = nt; t < padded; t++) sg[t] = -INFINITY; /* lanes past the keys */
                    float block_sum = 0.0f;
                    for (int64_t t = 0; t < padded; t += 8) {
                        const v8f p = exp8_nonpositive(load8(sg + t) - splat8(new_max));
                        store8(sg + t, p);
                    }
                    for (int64_t t = 0; t < nt; t++) block_sum += sg[t];
                    row_sum[h] = row_sum[h] * alpha + block_sum;
                    row_max[h] = new_max;
                    accumulate_values(acc + h * D, alpha, sg, vb + kvh * D, token_stride, nt, D);
                }
            }
        }
        float *o = job->out + r * H * D;
        for (int64_t h = 0; h < H; h++) {
            const float inv = row_sum[h] > 0.0f ? 1.0f / row_sum[h] : 0.0f;
            for (int64_t d = 0; d < D; d++) o[h * D + d] = acc[h * D + d] * inv;
        }
    }
}

/* The same loops compiled twice; the AVX2+FMA build is chosen at module load when the CPU has both. */
#ifdef HAVE_AVX2_BUILD
__attribute__((target("avx2,fma"))) static void attend_rows_avx2(job_t *job, float *acc, float *row_max,
                                                                  float *row_sum, float *scores) {
    attend_rows_impl(job, acc, row_max, row_sum, scores);
}
#endif

static void attend_rows_base(job_t *job, float *acc, float *row_max, float *row_sum, float *scores) {
    attend_rows_impl(job, acc, row_max, row_sum, scores);
}

static void (*attend_rows)(job_t *, float *, float *, float *, float *) = attend_rows_base;

static void *run_job(void *arg) {
    job_t *job = (job_t *)arg;
    const int64_t H = job->heads, D = job->head_dim;
    const int64_t padded = (job->block_size + 7) / 8 * 8;
    float *scratch = malloc(sizeof(float) * (H * D + 2 * H + padded * (H / job->kv_heads)));
    if (!scratch) {
        job->failed = 1;
        return NULL;
    }
    attend_rows(job, scratch, scratch + H * D, scratch + H * D + H, scratch + H * D + 2 * H);
    free(scratch);
    return NULL;
}

PyDoc_STRVAR(decode_doc,
             "decode(q, k, v, out, tables, ctx, rows, width, heads, kv_heads, head_dim, block_size, "
             "window, scale, threads)\n\nData pointers (ints) of contiguous fp32/int64 buffers; see "
             "the file header for the layout.  Writes out; returns None.");

static PyObject *pa_decode(PyObject *self, PyObject *args) {
    unsigned long long q, k, v, out, tables, ctx;
    long long rows, width, heads, kv_heads, head_dim, block_size, window, threads;
    double scale;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLLLLLdL", &q, &k, &v, &out, &tables, &ctx, &rows, &width, &heads,
                          &kv_heads, &head_dim, &block_size, &window, &scale, &threads))
        return NULL;
    if (rows < 0 || width < 1 || heads < 1 || kv_heads < 1 || heads % kv_heads || head_dim < 1 ||
        block_size < 1 || window < 0) {
        PyErr_SetString(PyExc_ValueError, "decode: bad sizes (rows, width, heads % kv_heads, head_dim, "
                                          "block_size or window)");
        return NULL;
    }
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows) threads = rows > 0 ? rows : 1;
    const int64_t *ctx_p = (const int64_t *)(uintptr_t)ctx;
    job_t jobs[MAX_THREADS];
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    /* contiguous row ranges with about equal numbers of keys (the work is proportional to them) */
    int64_t total = 0;
    for (int64_t r = 0; r < rows; r++) total += ctx_p[r];
    int64_t r = 0, seen = 0;
    for (int64_t t = 0; t < threads; t++) {
        job_t *j = &jobs[t];
        j->q = (const float *)(uintptr_t)q;
        j->k = (const float *)(uintptr_t)k;
        j->v = (const float *)(uintptr_t)v;
        j->out = (float *)(uintptr_t)out;
        j->tables = (const int64_t *)(uintptr_t)tables;
        j->ctx = ctx_p;
        j->width = width, j->heads = heads, j->kv_heads = kv_heads, j->head_dim = head_dim;
        j->block_size = block_size, j->window = window, j->scale = (float)scale, j->failed = 0;
        j->row_begin = r;
        const int64_t goal = total * (t + 1) / threads;
        while (r < rows && (t == threads - 1 || seen + ctx_p[r] / 2 < goal)) seen += ctx_p[r++];
        j->row_end = r;
    }
    run_jobs(run_job, jobs, sizeof(job_t), threads);
    for (int64_t t = 0; t < threads; t++) failed |= jobs[t].failed;
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", pa_decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_paged_attention",
    "Decode attention over the paged KV cache on CPU (fp32), reading the blocks in place.", -1, methods,
};

#ifdef HAVE_AVX2_BUILD
static void use_avx2(void) {
    attend_rows = attend_rows_avx2;
}
#else
static void use_avx2(void) {}
#endif

PyMODINIT_FUNC PyInit__paged_attention(void) { return create_kernel_module(&moduledef, use_avx2); }
