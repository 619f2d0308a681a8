/*
 * selftrain._cpu_logits: from the LM head's output to next tokens, on CPU, in fp32.
 *
 * Why it exists (SmolLM2-135M, vocabulary 49152, 64 rows, on the 2-core AVX2 dev machine):
 *  - MKL computes the head as `W @ h.T` (vocab-major [V, R]) in ~27 ms but as `h @ W.T` ([R, V],
 *    what F.linear returns) in ~43 ms, and torch's own transposing copy of [V, R] takes ~16 ms.
 *    `to_rows` transposes in cache-sized tiles on all threads.
 *  - torch's top-k and logsumexp for top-p sampling took ~14 ms per step.  `sample` reads each row a
 *    few times with vector code and sorts only the tokens that can be in the nucleus.
 *
 * `sample` makes the same selection as selftrain/sampler/sampling.py (the plain-torch reference,
 * used off the CPU and in the tests), row by row, each row on its own:
 *  - temperature 0: the first index of the largest logit;
 *  - top_k > 0 (and < V): only the tokens whose logit is >= the k-th largest logit of the row stay
 *    (ties at the k-th value all stay), as if the others had logit -inf; the k-th value comes from
 *    a min-heap of the k largest logits (one pass over the row), and the kept tokens are then the
 *    candidate set below, exact by construction (no eps bound needed);
 *  - otherwise p = softmax(logits / T) over the kept tokens; the nucleus is every token with p >= tau, tau the
 *    probability of the last token of the smallest top-probability set reaching top_p (ties at tau
 *    all kept; top_p = 1 keeps everything); the nucleus probabilities are accumulated in token-id
 *    order and the first token whose cumulative mass exceeds u * (nucleus mass) is taken.
 * Only the rounding differs from the torch code (a vectorised exp, sums in a different order), so
 * a token can differ from it only when u falls within rounding error of a CDF boundary.
 *
 * Finding tau without sorting the vocabulary: the tokens with p >= eps are collected (a compare
 * on the logits: p >= eps <=> logit >= max + T * log(eps * sum)), sorted, and tau read off them.
 * That is exact when their mass reaches top_p and tau >= 2 eps: every token left out has p < eps
 * (up to rounding) < tau, so it could neither be in the nucleus nor move tau.  eps = 1e-3, then 1e-5,
 * then the whole row is sorted (flat distributions, e.g. a random model; also as soon as the
 * candidates are more than an eighth of the row), by a radix sort.
 *
 * Layouts: logits [R, V] (`to_rows` output; its input is [V, C], C >= R columns of which the first
 * R are read) contiguous fp32; uniforms [R]
 * float64; tokens [R] int64; logprobs [R] fp32 or no pointer (0).  The logprob is the model's own
 * log-softmax of the chosen token at temperature 1 (what Completion.logprobs reports).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdlib.h>

#include "cpu_simd.h"

static const float NUCLEUS_EPS[] = {1e-3f, 1e-5f};
#define NUM_EPS ((int)(sizeof NUCLEUS_EPS / sizeof NUCLEUS_EPS[0]))

/* ---------------------------------------------------------------- to_rows: [V, R] -> [R, V] */

typedef struct {
    const float *src;
    float *dst;
    int64_t V, C, R, v_begin, v_end;
} transpose_job_t;

static void *transpose_job(void *arg) {
    const transpose_job_t *j = (const transpose_job_t *)arg;
    const int64_t V = j->V, C = j->C, R = j->R;
    /* a tile reads 64 source rows of 16 floats (one cache line each, 4 KiB) and writes 16 runs of
     * 64 floats: both sides stay in L1 while the tile is copied */
    enum { TILE_V = 64, TILE_R = 16 };
    for (int64_t r0 = 0; r0 < R; r0 += TILE_R) {
        const int64_t r1 = r0 + TILE_R < R ? r0 + TILE_R : R;
        for (int64_t v0 = j->v_begin; v0 < j->v_end; v0 += TILE_V) {
            const int64_t v1 = v0 + TILE_V < j->v_end ? v0 + TILE_V : j->v_end;
            for (int64_t r = r0; r < r1; r++) {
                float *d = j->dst + r * V;
                const float *s = j->src + r;
                for (int64_t v = v0; v < v1; v++) d[v] = s[v * C];
            }
        }
    }
    return NULL;
}

PyDoc_STRVAR(to_rows_doc, "to_rows(src, dst, V, C, R, threads)\n\nThe first R columns of src [V, C] -> dst "
                          "[R, V], contiguous fp32 (data pointers as ints).  Returns None.");

static PyObject *py_to_rows(PyObject *self, PyObject *args) {
    unsigned long long src, dst;
    long long V, C, R, threads;
    if (!PyArg_ParseTuple(args, "KKLLLL", &src, &dst, &V, &C, &R, &threads)) return NULL;
    if (V < 0 || R < 0 || R > C) {
        PyErr_SetString(PyExc_ValueError, "to_rows: need V >= 0 and 0 <= R <= C");
        return NULL;
    }
    const int64_t chunks = (V + 63) / 64;
    if (threads > chunks) threads = chunks;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    transpose_job_t jobs[MAX_THREADS];
    Py_BEGIN_ALLOW_THREADS
    for (int64_t t = 0; t < threads; t++) {
        transpose_job_t *j = &jobs[t];
        j->src = (const float *)(uintptr_t)src;
        j->dst = (float *)(uintptr_t)dst;
        j->V = V, j->C = C, j->R = R;
        /* whole tiles per thread */
        j->v_begin = chunks * t / threads * 64;
        j->v_end = t == threads - 1 ? V : chunks * (t + 1) / threads * 64;
    }
    run_jobs(transpose_job, jobs, sizeof(transpose_job_t), threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- sample */

typedef struct {
    const float *logits;
    const double *uniforms;
    int64_t *tokens;
    float *logprobs;
    int64_t V, row_begin, row_end;
    float temperature, top_p;
    int64_t top_k;
    int failed;
} sample_job_t;

typedef struct {
    int32_t *ids;  /* candidate token ids, ascending */
    float *probs;  /* their probabilities; on the whole-row path, every token's */
    float *sorted; /* the same probabilities, sorted descending */
    float *tmp;    /* sorting scratch */
} scratch_t;

static int by_descending(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* dst = src (n probabilities, all >= 0, no NaN) sorted descending; tmp: n floats of scratch.
 * The bit patterns of non-negative floats order as the values do, so a least-significant-digit
 * radix sort on ~bits (3 passes of 11, 11 and 10 bits) gives the same array as qsort in O(n):
 * measured on a 49152-token row, ~0.3 ms against ~10 ms for qsort (the whole-row path, taken by
 * flat distributions). Short arrays (the usual candidate sets) stay with qsort. */
static void sort_descending(const float *src, float *dst, float *tmp, int64_t n) {
    if (n <= 512) {
        memcpy(dst, src, sizeof(float) * n);
        qsort(dst, n, sizeof(float), by_descending);
        return;
    }
    const int shifts[3] = {0, 11, 22};
    const uint32_t masks[3] = {0x7FF, 0x7FF, 0x3FF};
    const float *in = src;
    float *outs[3] = {dst, tmp, dst}; /* src -> dst -> tmp -> dst: the last pass lands in dst */
    for (int pass = 0; pass < 3; pass++) {
        int64_t count[2049];
        memset(count, 0, sizeof count);
        const uint32_t shift = (uint32_t)shifts[pass], mask = masks[pass];
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, in + i, sizeof bits);
            count[((~bits >> shift) & mask) + 1]++;
        }
        for (int b = 0; b < 2048; b++) count[b + 1] += count[b];
        float *out = outs[pass];
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, in + i, sizeof bits);
            out[count[(~bits >> shift) & mask]++] = in[i];
        }
        in = out;
    }
}

/* tau for probabilities sorted descending: as torch's `(cumsum - p < top_p).sum()` then a gather
 * (torch's CPU cumsum of fp32 accumulates in double and rounds each prefix to fp32; so does this) */
static float nucleus_tau(const float *sorted, int64_t n, float top_p) {
    double run = 0.0;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        run += sorted[i];
        kept += ((float)run - sorted[i]) < top_p;
    }
    return sorted[(kept > 0 ? kept : 1) - 1];
}

/* restore the min-heap property of h[0..n) below position i */
static void sift_down(float *h, int64_t n, int64_t i) {
    const float x = h[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (!(h[c] < x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

/* the k-th largest of l[0..V) counted with multiplicity (torch's topk(k).values[-1]), 1 <= k <= V;
 * heap: k floats of scratch. One pass: a logit enters the heap only when it beats the current
 * k-th largest, which for LM rows is rare after the first few thousand tokens. */
static float kth_largest(const float *l, int64_t V, int64_t k, float *heap) {
    memcpy(heap, l, sizeof(float) * k);
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(heap, k, i);
    for (int64_t i = k; i < V; i++)
        if (l[i] > heap[0]) {
            heap[0] = l[i];
            sift_down(heap, k, 0);
        }
    return heap[0];
}

static inline ALWAYS_INLINE float hsum8(v8f s) {
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* the last V % 8 logits as one vector, -inf in the lanes past the row */
static inline ALWAYS_INLINE v8f tail8(const float *l, int64_t V) {
    float buf[8];
    const int64_t start = V / 8 * 8;
    for (int i = 0; i < 8; i++) buf[i] = start + i < V ? l[start + i] : -INFINITY;
    return load8(buf);
}

/* sum over the row of exp((l - m) * scale), scale > 0 */
static inline ALWAYS_INLINE float sum_exp(const float *l, int64_t V, float m, float scale) {
    v8f acc = splat8(0.0f);
    const v8f vm = splat8(m), vs = splat8(scale);
    const int64_t V8 = V / 8 * 8;
    for (int64_t i = 0; i < V8; i += 8) acc += exp8_nonpositive((load8(l + i) - vm) * vs);
    if (V8 < V) acc += exp8_nonpositive((tail8(l, V) - vm) * vs);
    return hsum8(acc);
}

/* one token's probability, computed exactly as a lane of the vector passes computes it */
static inline ALWAYS_INLINE float prob1(float logit, float m, float scale, float sum) {
    return exp8_nonpositive(splat8((logit - m) * scale))[0] / sum;
}

static inline ALWAYS_INLINE void sample_row(const float *l, int64_t V, float temperature, float top_p,
                                            int64_t top_k, double u, int64_t *token, float *logprob,
                                            scratch_t *sc) {
    /* pass 1: the largest logit and its first index */
    const int64_t V8 = V / 8 * 8;
    v8f mx = splat8(-INFINITY);
    v8i at = {0, 0, 0, 0, 0, 0, 0, 0};
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int64_t i = 0; i < V8; i += 8) {
        const v8f x = load8(l + i);
        const v8i gt = x > mx;
        mx = select8(gt, x, mx);
        at = (gt & (lane + (int32_t)i)) | (~gt & at);
    }
    float m = -INFINITY;
    int64_t best = 0;
    for (int k = 0; k < 8; k++)
        if (mx[k] > m || (mx[k] == m && at[k] < best)) m = mx[k], best = at[k];
    for (int64_t i = V8; i < V; i++)
        if (l[i] > m) m = l[i], best = i;

    int64_t tok = best;
    float sum_t = 0.0f;
    if (temperature > 0.0f) {
        const float scale = 1.0f / temperature;
        sum_t = sum_exp(l, V, m, scale);
        int64_t n = -1; /* candidates holding the nucleus, or -1: use the whole row */
        float tau = 0.0f;
        if (top_k > 0 && top_k < V) { /* the candidates are the top-k set, renormalised */
            const float kth = kth_largest(l, V, top_k, sc->tmp);
            int64_t c = 0;
            double kept_sum = 0.0;
            for (int64_t i = 0; i < V; i++)
                if (l[i] >= kth) {
                    sc->ids[c] = (int32_t)i;
                    sc->probs[c] = prob1(l[i], m, scale, 1.0f);
                    kept_sum += sc->probs[c++];
                }
            const float ksum = (float)kept_sum;
            for (int64_t k = 0; k < c; k++) sc->probs[k] /= ksum;
            if (top_p < 1.0f) {
                sort_descending(sc->probs, sc->sorted, sc->tmp, c);
                tau = nucleus_tau(sc->sorted, c, top_p);
            }
            n = c;
        }
        for (int e = 0; e < NUM_EPS && n < 0 && top_p < 1.0f; e++) {
            const float eps = NUCLEUS_EPS[e];
            const float cut = m + temperature * (logf(eps * sum_t) - 1e-3f);
            const v8f vcut = splat8(cut);
            int64_t c = 0;
            float mass = 0.0f;
            for (int64_t i = 0; i < V8; i += 8) {
                const v8i in = load8(l + i) >= vcut;
                int any = 0;
                for (int k = 0; k < 8; k++) any |= in[k];
                if (!any) continue;
                for (int k = 0; k < 8; k++)
                    if (in[k]) sc->ids[c++] = (int32_t)(i + k);
            }
            for (int64_t i = V8; i < V; i++)
                if (l[i] >= cut) sc->ids[c++] = (int32_t)i;
            if (c > V / 8) break; /* a flat row: the vectorised whole-row path is cheaper */
            for (int64_t k = 0; k < c; k++) {
                sc->probs[k] = prob1(l[sc->ids[k]], m, scale, sum_t);
                mass += sc->probs[k];
            }
            if (mass < top_p) continue;
            sort_descending(sc->probs, sc->sorted, sc->tmp, c);
            tau = nucleus_tau(sc->sorted, c, top_p);
            if (tau >= 2.0f * eps) {
                n = c;
                break;
            }
        }
        if (n < 0) { /* the whole row */
            const v8f vm = splat8(m), vs = splat8(scale), vsum = splat8(sum_t);
            for (int64_t i = 0; i < V8; i += 8) store8(sc->probs + i, exp8_nonpositive((load8(l + i) - vm) * vs) / vsum);
            for (int64_t i = V8; i < V; i++) sc->probs[i] = prob1(l[i], m, scale, sum_t);
            if (top_p < 1.0f) {
                sort_descending(sc->probs, sc->sorted, sc->tmp, V);
                tau = nucleus_tau(sc->sorted, V, top_p);
            }
        }
        /* inverse CDF in token-id order over the nucleus (prefix sums as torch's cumsum makes them) */
        const int64_t count = n < 0 ? V : n;
        double total = 0.0;
        int64_t last = -1;
        for (int64_t k = 0; k < count; k++)
            if (sc->probs[k] >= tau && sc->probs[k] > 0.0f) total += sc->probs[k], last = k;
        const float target = (float)u * (float)total;
        double cdf = 0.0;
        int64_t pick = last;
        for (int64_t k = 0; k < last; k++) {
            if (sc->probs[k] >= tau) cdf += sc->probs[k];
            if ((float)cdf > target) {
                pick = k;
                break;
            }
        }
        if (pick >= 0) tok = n < 0 ? pick : sc->ids[pick];
    }
    *token = tok;
    if (logprob) {
        const float sum1 = temperature == 1.0f ? sum_t : sum_exp(l, V, m, 1.0f);
        *logprob = (l[tok] - m) - logf(sum1);
    }
}

static inline ALWAYS_INLINE void sample_rows_impl(sample_job_t *j, scratch_t *sc) {
    for (int64_t r = j->row_begin; r < j->row_end; r++)
        sample_row(j->logits + r * j->V, j->V, j->temperature, j->top_p, j->top_k, j->uniforms[r],
                   j->tokens + r, j->logprobs ? j->logprobs + r : NULL, sc);
}

#ifdef HAVE_AVX2_BUILD
__attribute__((target("avx2,fma"))) static void sample_rows_avx2(sample_job_t *j, scratch_t *sc) {
    sample_rows_impl(j, sc);
}
#endif

static void sample_rows_base(sample_job_t *j, scratch_t *sc) { sample_rows_impl(j, sc); }

static void (*sample_rows)(sample_job_t *, scratch_t *) = sample_rows_base;

static void *sample_job(void *arg) {
    sample_job_t *j = (sample_job_t *)arg;
    if (j->row_begin >= j->row_end) return NULL;
    scratch_t sc;
    char *mem = malloc((sizeof(int32_t) + 3 * sizeof(float)) * (size_t)j->V);
    if (!mem) {
        j->failed = 1;
        return NULL;
    }
    sc.ids = (int32_t *)mem;
    sc.probs = (float *)(mem + sizeof(int32_t) * j->V);
    sc.sorted = sc.probs + j->V;
    sc.tmp = sc.sorted + j->V;
    sample_rows(j, &sc);
    free(mem);
    return NULL;
}

PyDoc_STRVAR(sample_doc,
             "sample(logits, uniforms, tokens, logprobs, R, V, temperature, top_p, top_k, threads)\n\n"
             "Data pointers (ints) of contiguous buffers, see the file header; logprobs may be 0.  "
             "Writes tokens (and logprobs); returns None.");

static PyObject *py_sample(PyObject *self, PyObject *args) {
    unsigned long long logits, uniforms, tokens, logprobs;
    long long R, V, top_k, threads;
    double temperature, top_p;
    if (!PyArg_ParseTuple(args, "KKKKLLddLL", &logits, &uniforms, &tokens, &logprobs, &R, &V, &temperature,
                          &top_p, &top_k, &threads))
        return NULL;
    if (R < 0 || V < 1 || V > INT32_MAX || !(temperature >= 0.0) || !(top_p > 0.0 && top_p <= 1.0) ||
        top_k < 0) {
        PyErr_SetString(PyExc_ValueError, "sample: need R >= 0, 1 <= V < 2^31, temperature >= 0, "
                                          "0 < top_p <= 1, top_k >= 0");
        return NULL;
    }
    if (threads > R) threads = R;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    sample_job_t jobs[MAX_THREADS];
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t t = 0; t < threads; t++) {
        sample_job_t *j = &jobs[t];
        j->logits = (const float *)(uintptr_t)logits;
        j->uniforms = (const double *)(uintptr_t)uniforms;
        j->tokens = (int64_t *)(uintptr_t)tokens;
        j->logprobs = (float *)(uintptr_t)logprobs;
        j->V = V, j->temperature = (float)temperature, j->top_p = (float)top_p, j->top_k = top_k, j->failed = 0;
        j->row_begin = R * t / threads;
        j->row_end = R * (t + 1) / threads;
    }
    run_jobs(sample_job, jobs, sizeof(sample_job_t), threads);
    for (int64_t t = 0; t < threads; t++) failed |= jobs[t].failed;
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"to_rows", py_to_rows, METH_VARARGS, to_rows_doc},
    {"sample", py_sample, METH_VARARGS, sample_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_cpu_logits",
    "From the LM head's output to next tokens on CPU (fp32): transposition and top-k / top-p sampling.", -1, methods,
};

#ifdef HAVE_AVX2_BUILD
static void use_avx2(void) {
    sample_rows = sample_rows_avx2;
}
#else
static void use_avx2(void) {}
#endif

PyMODINIT_FUNC PyInit__cpu_logits(void) { return create_kernel_module(&moduledef, use_avx2); }
