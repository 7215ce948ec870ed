/*
 * Fused exact top-k maximum inner product search on the CPU: the cell index's "simd" backend.
 *
 * The score of cell j for query x is <x, y_j> + h_j. A BLAS search (FAISS's flat index) writes
 * the whole M x N score matrix to memory and then selects from it; with the latent dimensions
 * of AE-OT (d = 8 to 64) each score costs only d multiply-adds, so that search is bound by
 * memory traffic. Here the scores of a group of queries against a block of 16 cells stay in
 * vector registers: each query keeps its k best cells and compares every new score vector
 * with its current k-th best score, and only the rare vectors that beat it go to a scalar
 * insertion. The cost is then the multiply-adds alone.
 *
 * Layout (built by solver/cells/index.py): the cells are padded to a multiple of 16 and stored
 * block-major, yb[b][c][l] = y[16 b + l][c] (float32), hb[16 b + l] = h (padding: -inf), so the
 * 16 lanes of a vector are 16 cells. Queries are row-major float32 (M, d). Results are the k
 * best scores (descending) and their cells (int64, -1 where fewer than k cells exist). Equal
 * scores: the lower cell first (the cells of a query are met in index order, a cell enters a
 * list only by beating its k-th score, and it is inserted after the equal ones).
 *
 * Code paths: AVX-512F (8 queries x 2 blocks of 16 lanes per step), AVX2 + FMA (4 queries x
 * 2 x 8 lanes), and portable C that the compiler vectorises for the baseline instruction set
 * (also the path for the last M mod 8 queries). The path is picked at run time from the CPU's features, so one
 * build runs on any x86-64 host. Every path computes each score as h_j plus the products added
 * in coordinate order (fused multiply-adds on AVX, separate roundings in portable C), so the
 * paths agree to float32 rounding.
 * The GIL is released while searching: the caller splits the queries over a thread pool.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AEOT_X86 1
#endif

#define LANES 16
#define GROUP 8
/* Queries per outer chunk and bytes of cell data per inner chunk (held in the L2 cache). */
#define QUERY_CHUNK 1024
#define CELL_CHUNK_BYTES (256 * 1024)

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
static const char *ISA_NAMES[] = {"generic", "avx2", "avx512"};

/* Insert score s of cell j into the descending list (ts, ti) of length k; s beats ts[k-1]. */
static inline void insert(float s, int64_t j, float *ts, int64_t *ti, int k) {
    int p = k - 1;
    while (p > 0 && ts[p - 1] < s) {
        ts[p] = ts[p - 1];
        ti[p] = ti[p - 1];
        p--;
    }
    ts[p] = s;
    ti[p] = j;
}

/* Lanes of one 16-cell block whose score beats the query's k-th best go to the list; `lanes`
 * has a bit set for each lane that beat it when the block was compared (the others cannot). */
static inline void merge_block(const float *acc, unsigned lanes, int64_t b, int k, float *ts,
                               int64_t *ti) {
    while (lanes) {
        const int l = __builtin_ctz(lanes);
        lanes &= lanes - 1;
        if (acc[l] > ts[k - 1]) insert(acc[l], b * LANES + l, ts, ti, k);
    }
}

/* Portable path: nq <= GROUP queries against blocks [b0, b1). */
static void group_generic(const float *xq, int nq, int d, const float *yb, const float *hb,
                          int64_t b0, int64_t b1, int k, float *ts, int64_t *ti) {
    float acc[GROUP][LANES];
    for (int64_t b = b0; b < b1; b++) {
        const float *yv = yb + b * (int64_t)d * LANES;
        for (int q = 0; q < nq; q++)
            for (int l = 0; l < LANES; l++) acc[q][l] = hb[b * LANES + l];
        for (int c = 0; c < d; c++)
            for (int q = 0; q < nq; q++) {
                const float xv = xq[q * d + c];
                for (int l = 0; l < LANES; l++) acc[q][l] += xv * yv[c * LANES + l];
            }
        for (int q = 0; q < nq; q++) merge_block(acc[q], 0xFFFFu, b, k, ts + q * k, ti + q * k);
    }
}

#ifdef AEOT_X86
/* Compare a block's scores with the query's k-th best; merge the lanes that beat it. */
__attribute__((target("avx512f"))) static inline void check_avx512(__m512 acc, __m512 *thr,
                                                                    int64_t b, int k, float *ts,
                                                                    int64_t *ti) {
    const __mmask16 beat = _mm512_cmp_ps_mask(acc, *thr, _CMP_GT_OQ);
    if (__builtin_expect(beat != 0, 0)) {
        float tmp[LANES];
        _mm512_storeu_ps(tmp, acc);
        merge_block(tmp, beat, b, k, ts, ti);
        *thr = _mm512_set1_ps(ts[k - 1]);
    }
}

/* Eight queries against two 16-cell blocks per step: 16 accumulators, and each coordinate
 * costs 2 cell loads and 8 query broadcasts for 16 multiply-adds (one block per step needed
 * 9 loads for 8: 1.2 to 1.35x slower on one thread, docs/benchmarks.md). */
__attribute__((target("avx512f"))) static void group_avx512(const float *xq, int d,
                                                             const float *yb, const float *hb,
                                                             int64_t b0, int64_t b1, int k,
                                                             float *ts, int64_t *ti) {
    __m512 thr[GROUP];
    for (int q = 0; q < GROUP; q++) thr[q] = _mm512_set1_ps(ts[q * k + k - 1]);
    int64_t b = b0;
    for (; b + 2 <= b1; b += 2) {
        const float *yv = yb + b * (int64_t)d * LANES;
        const float *yw = yv + (int64_t)d * LANES;
        const __m512 hv = _mm512_loadu_ps(hb + b * LANES);
        const __m512 hw = _mm512_loadu_ps(hb + (b + 1) * LANES);
        __m512 acc[GROUP], acd[GROUP];
#pragma GCC unroll 8
        for (int q = 0; q < GROUP; q++) {
            acc[q] = hv;
            acd[q] = hw;
        }
        for (int c = 0; c < d; c++) {
            const __m512 y = _mm512_loadu_ps(yv + c * LANES);
            const __m512 w = _mm512_loadu_ps(yw + c * LANES);
#pragma GCC unroll 8
            for (int q = 0; q < GROUP; q++) {
                const __m512 xv = _mm512_set1_ps(xq[q * d + c]);
                acc[q] = _mm512_fmadd_ps(xv, y, acc[q]);
                acd[q] = _mm512_fmadd_ps(xv, w, acd[q]);
            }
        }
#pragma GCC unroll 8
        for (int q = 0; q < GROUP; q++) {
            check_avx512(acc[q], &thr[q], b, k, ts + q * k, ti + q * k);
            check_avx512(acd[q], &thr[q], b + 1, k, ts + q * k, ti + q * k);
        }
    }
    if (b < b1) { /* an odd last block */
        const float *yv = yb + b * (int64_t)d * LANES;
        const __m512 hv = _mm512_loadu_ps(hb + b * LANES);
        __m512 acc[GROUP];
#pragma GCC unroll 8
        for (int q = 0; q < GROUP; q++) acc[q] = hv;
        for (int c = 0; c < d; c++) {
            const __m512 y = _mm512_loadu_ps(yv + c * LANES);
#pragma GCC unroll 8
            for (int q = 0; q < GROUP; q++)
                acc[q] = _mm512_fmadd_ps(_mm512_set1_ps(xq[q * d + c]), y, acc[q]);
        }
#pragma GCC unroll 8
        for (int q = 0; q < GROUP; q++) check_avx512(acc[q], &thr[q], b, k, ts + q * k, ti + q * k);
    }
}

/* Four queries at a time: 8 accumulators of 8 lanes fit the 16 AVX2 registers. */
__attribute__((target("avx2,fma"))) static void quad_avx2(const float *xq, int d, const float *yb,
                                                          const float *hb, int64_t b0, int64_t b1,
                                                          int k, float *ts, int64_t *ti) {
    __m256 thr[4];
    for (int q = 0; q < 4; q++) thr[q] = _mm256_set1_ps(ts[q * k + k - 1]);
    for (int64_t b = b0; b < b1; b++) {
        const float *yv = yb + b * (int64_t)d * LANES;
        const __m256 h0 = _mm256_loadu_ps(hb + b * LANES), h1 = _mm256_loadu_ps(hb + b * LANES + 8);
        __m256 lo[4], hi[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            lo[q] = h0;
            hi[q] = h1;
        }
        for (int c = 0; c < d; c++) {
            const __m256 y0 = _mm256_loadu_ps(yv + c * LANES);
            const __m256 y1 = _mm256_loadu_ps(yv + c * LANES + 8);
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                const __m256 xv = _mm256_broadcast_ss(xq + q * d + c);
                lo[q] = _mm256_fmadd_ps(xv, y0, lo[q]);
                hi[q] = _mm256_fmadd_ps(xv, y1, hi[q]);
            }
        }
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            const unsigned beat =
                (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(lo[q], thr[q], _CMP_GT_OQ)) |
                ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(hi[q], thr[q], _CMP_GT_OQ)) << 8);
            if (__builtin_expect(beat != 0, 0)) {
                float tmp[LANES];
                _mm256_storeu_ps(tmp, lo[q]);
                _mm256_storeu_ps(tmp + 8, hi[q]);
                merge_block(tmp, beat, b, k, ts + q * k, ti + q * k);
                thr[q] = _mm256_set1_ps(ts[q * k + k - 1]);
            }
        }
    }
}
#endif

static int best_isa(void) {
#ifdef AEOT_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
#endif
    return ISA_GENERIC;
}

static void search(const float *x, int64_t m, int d, const float *yb, const float *hb,
                   int64_t nb, int k, float *os, int64_t *oi, int isa) {
    for (int64_t i = 0; i < m * k; i++) {
        os[i] = -INFINITY;
        oi[i] = -1;
    }
    int64_t chunk = CELL_CHUNK_BYTES / ((int64_t)d * LANES * (int64_t)sizeof(float));
    if (chunk < 1) chunk = 1;
    for (int64_t qa = 0; qa < m; qa += QUERY_CHUNK) {
        const int64_t qb = qa + QUERY_CHUNK < m ? qa + QUERY_CHUNK : m;
        for (int64_t b0 = 0; b0 < nb; b0 += chunk) {
            const int64_t b1 = b0 + chunk < nb ? b0 + chunk : nb;
            int64_t q = qa;
#ifdef AEOT_X86
            if (isa == ISA_AVX512) {
                for (; q + GROUP <= qb; q += GROUP)
                    group_avx512(x + q * d, d, yb, hb, b0, b1, k, os + q * k, oi + q * k);
            } else if (isa == ISA_AVX2) {
                for (; q + 4 <= qb; q += 4)
                    quad_avx2(x + q * d, d, yb, hb, b0, b1, k, os + q * k, oi + q * k);
            }
#endif
            for (; q < qb; q += GROUP) {
                const int nq = (int)(qb - q < GROUP ? qb - q : GROUP);
                group_generic(x + q * d, nq, d, yb, hb, b0, b1, k, os + q * k, oi + q * k);
            }
        }
    }
}

static int isa_from_name(const char *name) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) return i;
    return -1;
}

static int check_len(Py_buffer *buf, Py_ssize_t want, const char *what) {
    if (buf->len != want) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", what, buf->len, want);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(topk_doc,
             "topk(x, yb, hb, m, d, k, scores, cells, isa=None)\n--\n\n"
             "Exact top-k of <x, y_j> + h_j for m queries of dimension d.\n\n"
             "x: float32 (m, d); yb: float32 (nb, d, 16); hb: float32 (16 nb,), padding -inf;\n"
             "scores: float32 (m, k) and cells: int64 (m, k), written. isa: a name from isas(),\n"
             "default the best this CPU runs.");

static PyObject *py_topk(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"x", "yb", "hb", "m", "d", "k", "scores", "cells", "isa", NULL};
    Py_buffer x, yb, hb, os, oi;
    Py_ssize_t m;
    int d, k;
    const char *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*y*niiw*w*|z", kwlist, &x, &yb, &hb, &m,
                                     &d, &k, &os, &oi, &isa_name))
        return NULL;
    PyObject *result = NULL;
    const int best = best_isa();
    int isa = best;
    const Py_ssize_t nb = hb.len / (Py_ssize_t)(LANES * sizeof(float));
    if (isa_name != NULL) {
        isa = isa_from_name(isa_name);
        if (isa < 0 || isa > best) {
            PyErr_Format(PyExc_ValueError, "isa %s is not available on this CPU", isa_name);
            goto done;
        }
    }
    if (m < 0 || d < 1 || k < 1) {
        PyErr_SetString(PyExc_ValueError, "need m >= 0, d >= 1 and k >= 1");
        goto done;
    }
    if (check_len(&x, m * d * (Py_ssize_t)sizeof(float), "x") ||
        check_len(&hb, nb * LANES * (Py_ssize_t)sizeof(float), "hb") ||
        check_len(&yb, nb * d * LANES * (Py_ssize_t)sizeof(float), "yb") ||
        check_len(&os, m * k * (Py_ssize_t)sizeof(float), "scores") ||
        check_len(&oi, m * k * (Py_ssize_t)sizeof(int64_t), "cells"))
        goto done;
    Py_BEGIN_ALLOW_THREADS search((const float *)x.buf, m, d, (const float *)yb.buf,
                                  (const float *)hb.buf, nb, k, (float *)os.buf,
                                  (int64_t *)oi.buf, isa);
    Py_END_ALLOW_THREADS result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&yb);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&os);
    PyBuffer_Release(&oi);
    return result;
}

/* Scores (float64) of each query's kc candidate cells; the best k, best first, equal scores by
 * the lower cell (a cell listed twice keeps its first position). */
static int rescore(const float *x, int64_t m, int d, const float *y, const double *h, int64_t n,
                   const int32_t *cand, int kc, int k, double *os, int64_t *oc) {
    double s[64];
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * d;
        const int32_t *ci = cand + i * kc;
        for (int j = 0; j < kc; j++) {
            if (ci[j] < 0 || ci[j] >= n) return -1;
            const float *yj = y + (int64_t)ci[j] * d;
            double acc = h[ci[j]];
            for (int c = 0; c < d; c++) acc += (double)xi[c] * (double)yj[c];
            s[j] = acc;
        }
        for (int r = 0; r < k; r++) { /* selection of the r-th best; kc is small */
            int best = -1;
            for (int j = 0; j < kc; j++)
                if (s[j] != -INFINITY &&
                    (best < 0 || s[j] > s[best] || (s[j] == s[best] && ci[j] < ci[best])))
                    best = j;
            os[i * k + r] = best < 0 ? -INFINITY : s[best];
            oc[i * k + r] = best < 0 ? -1 : ci[best];
            if (best >= 0) s[best] = -INFINITY;
        }
    }
    return 0;
}

PyDoc_STRVAR(rescore_doc,
             "rescore(x, y, h, cand, m, d, kc, k, scores, cells)\n--\n\n"
             "Scores <x, y_j> + h_j of each query's candidate cells, in float64; the best k.\n\n"
             "x: float32 (m, d); y: float32 (n, d); h: float64 (n,); cand: int32 (m, kc),\n"
             "kc <= 64; scores: float64 (m, k) and cells: int64 (m, k), written, best first.");

static PyObject *py_rescore(PyObject *self, PyObject *args) {
    Py_buffer x, y, h, cand, os, oc;
    Py_ssize_t m;
    int d, kc, k;
    if (!PyArg_ParseTuple(args, "y*y*y*y*niiiw*w*", &x, &y, &h, &cand, &m, &d, &kc, &k, &os, &oc))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = h.len / (Py_ssize_t)sizeof(double);
    int status = 0;
    if (m < 0 || d < 1 || kc < 1 || kc > 64 || k < 1 || k > kc) {
        PyErr_SetString(PyExc_ValueError, "need m >= 0, d >= 1 and 1 <= k <= kc <= 64");
        goto done;
    }
    if (check_len(&x, m * d * (Py_ssize_t)sizeof(float), "x") ||
        check_len(&y, n * d * (Py_ssize_t)sizeof(float), "y") ||
        check_len(&cand, m * kc * (Py_ssize_t)sizeof(int32_t), "cand") ||
        check_len(&os, m * k * (Py_ssize_t)sizeof(double), "scores") ||
        check_len(&oc, m * k * (Py_ssize_t)sizeof(int64_t), "cells"))
        goto done;
    Py_BEGIN_ALLOW_THREADS status =
        rescore((const float *)x.buf, m, d, (const float *)y.buf, (const double *)h.buf, n,
                (const int32_t *)cand.buf, kc, k, (double *)os.buf, (int64_t *)oc.buf);
    Py_END_ALLOW_THREADS if (status < 0) {
        PyErr_SetString(PyExc_ValueError, "a candidate cell is out of range");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    PyBuffer_Release(&h);
    PyBuffer_Release(&cand);
    PyBuffer_Release(&os);
    PyBuffer_Release(&oc);
    return result;
}

/*
 * AMX screening (Intel Advanced Matrix Extensions, BF16 tiles): approximate top-k.
 *
 * One tile multiply scores 16 queries against 16 cells over up to 32 coordinates in bfloat16
 * with float32 accumulation, several times the multiply-add rate of AVX-512 in float32. The
 * scores are therefore approximate: the caller (solver/cells/index.py) keeps more candidates
 * than it needs, re-scores them in float64 and certifies each query with a bound on the
 * rounding error, so the answer it returns is exact. Two precisions ("modes"):
 *   1: <bf16(x), bf16(y)>, relative error about 2^-7 of |x| |y|;
 *   3: x and y split into bf16 head and tail, <xh, yh> + <xl, yh> + <xh, yl> as one product
 *      over 3 d coordinates, relative error about 3 * 2^-16 of |x| |y|.
 * Layout (built by solver/cells/index.py): the expanded cell vectors (d or 3 d bf16 values,
 * zero-padded to nk chunks of cw values) for each pair of 16-cell blocks, in the tile
 * multiply's pair-interleaved form: ya[b][j][r][l][p] = Y[16 b + l][cw j + 2 r + p]; heights
 * hb[16 b + l] as float32 (padding -inf), with an even number of blocks.
 * Each thread configures its tiles per call and releases them at the end. Linux gives a
 * process the AMX register state only on request (arch_prctl), made once at import.
 */
#if defined(AEOT_X86) && ((defined(__clang__) && __clang_major__ >= 12) || \
                          (!defined(__clang__) && __GNUC__ >= 11))
#define AEOT_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f")))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AMX_CELL_CHUNK_BYTES (512 * 1024)

static int amx_ok = 0;

static void amx_init(void) {
    unsigned a, b, c, d;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    if (!((d >> 22) & 1) || !((d >> 24) & 1)) return; /* AMX-BF16, AMX-TILE */
    amx_ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

typedef struct __attribute__((packed)) {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

static inline uint16_t to_bf16(float v) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Merge one stored 2 x 2 tile group (queries t = 0, 1 of the 32; blocks b, b + 1) into the
 * lists: row r of the 32 queries compares its 32 scores (+ h) with its k-th best thr[r]. */
AMX_TARGET static inline void amx_scan(float (*c)[16][16], const float *hb, int64_t b,
                                       float *thr, int k, float *ts, int64_t *ti) {
    const __m512 h0 = _mm512_loadu_ps(hb + b * LANES), h1 = _mm512_loadu_ps(hb + b * LANES + 16);
    for (int r = 0; r < 32; r++) {
        const int t = r >> 4, q = r & 15;
        const __m512 th = _mm512_set1_ps(thr[r]);
        const __mmask16 m0 =
            _mm512_cmp_ps_mask(_mm512_add_ps(_mm512_load_ps(c[2 * t][q]), h0), th, _CMP_GT_OQ);
        const __mmask16 m1 = _mm512_cmp_ps_mask(
            _mm512_add_ps(_mm512_load_ps(c[2 * t + 1][q]), h1), th, _CMP_GT_OQ);
        if (__builtin_expect((m0 | m1) != 0, 0)) {
            float *tq = ts + r * k;
            int64_t *iq = ti + r * k;
            unsigned lanes = (unsigned)m0 | ((unsigned)m1 << 16);
            while (lanes) {
                const int l = __builtin_ctz(lanes);
                lanes &= lanes - 1;
                const float s = c[2 * t + (l >> 4)][q][l & 15] + hb[b * LANES + l];
                if (s > tq[k - 1]) insert(s, b * LANES + l, tq, iq, k);
            }
            thr[r] = tq[k - 1];
        }
    }
}

/* Approximate top-k of m queries; returns -1 when out of memory. nb (even) blocks of cells. */
AMX_TARGET static int amx_search(const float *x, int64_t m, int d, int mode, int nk, int cw,
                                 const uint16_t *ya, const float *hb, int64_t nb, int k,
                                 float *os, int64_t *oi) {
    const int64_t kp = (int64_t)nk * cw;
    uint16_t *a = aligned_alloc(64, (size_t)(QUERY_CHUNK * kp * sizeof(uint16_t)));
    float *ts = malloc((size_t)QUERY_CHUNK * k * sizeof(float));
    int64_t *ti = malloc((size_t)QUERY_CHUNK * k * sizeof(int64_t));
    if (a == NULL || ts == NULL || ti == NULL) {
        free(a);
        free(ts);
        free(ti);
        return -1;
    }
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 4; t++) { /* scores: 16 queries x 16 cells */
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    for (int t = 4; t < 6; t++) { /* queries: 16 x cw */
        cfg.rows[t] = 16;
        cfg.colsb[t] = (uint16_t)(2 * cw);
    }
    for (int t = 6; t < 8; t++) { /* cells: cw / 2 pairs x 16 */
        cfg.rows[t] = (uint8_t)(cw / 2);
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
    float c[2][4][16][16] __attribute__((aligned(64)));
    const int64_t block_bytes = (int64_t)nk * cw * LANES * (int64_t)sizeof(uint16_t);
    int64_t chunk = (AMX_CELL_CHUNK_BYTES / block_bytes) & ~(int64_t)1;
    if (chunk < 2) chunk = 2;
    const int64_t tile = (int64_t)(cw / 2) * 32; /* uint16 values per cell tile */
    for (int64_t qa = 0; qa < m; qa += QUERY_CHUNK) {
        const int64_t nq = m - qa < QUERY_CHUNK ? m - qa : QUERY_CHUNK;
        const int64_t rows = (nq + 31) & ~(int64_t)31;
        memset(a, 0, (size_t)(rows * kp * sizeof(uint16_t)));
        for (int64_t q = 0; q < nq; q++) {
            const float *xq = x + (qa + q) * d;
            uint16_t *aq = a + q * kp;
            for (int j = 0; j < d; j++) {
                const uint16_t hi = to_bf16(xq[j]);
                aq[j] = hi;
                if (mode == 3) {
                    aq[d + j] = to_bf16(xq[j] - from_bf16(hi));
                    aq[2 * d + j] = hi;
                }
            }
        }
        for (int64_t i = 0; i < rows * k; i++) {
            ts[i] = -INFINITY;
            ti[i] = -1;
        }
        for (int64_t b0 = 0; b0 < nb; b0 += chunk) {
            const int64_t b1 = b0 + chunk < nb ? b0 + chunk : nb;
            for (int64_t qb = 0; qb < rows; qb += 32) {
                const uint16_t *aq = a + qb * kp;
                float *tq = ts + qb * k;
                int64_t *iq = ti + qb * k;
                float thr[32];
                for (int r = 0; r < 32; r++) thr[r] = tq[r * k + k - 1];
                int64_t prev = -1;
                for (int64_t b = b0; b < b1; b += 2) {
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                    const uint16_t *y0 = ya + b * nk * tile, *y1 = y0 + nk * tile;
                    for (int j = 0; j < nk; j++) {
                        _tile_loadd(4, aq + j * cw, kp * 2);
                        _tile_loadd(6, y0 + j * tile, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_loadd(7, y1 + j * tile, 64);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_loadd(5, aq + 16 * kp + j * cw, kp * 2);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                    /* Scan the previous group while the tile unit works on this one. */
                    if (prev >= 0) amx_scan(c[(prev >> 1) & 1], hb, prev, thr, k, tq, iq);
                    float(*out)[16][16] = c[(b >> 1) & 1];
                    _tile_stored(0, out[0], 64);
                    _tile_stored(1, out[1], 64);
                    _tile_stored(2, out[2], 64);
                    _tile_stored(3, out[3], 64);
                    prev = b;
                }
                if (prev >= 0) amx_scan(c[(prev >> 1) & 1], hb, prev, thr, k, tq, iq);
            }
        }
        memcpy(os + qa * k, ts, (size_t)(nq * k * sizeof(float)));
        memcpy(oi + qa * k, ti, (size_t)(nq * k * sizeof(int64_t)));
    }
    _tile_release();
    free(a);
    free(ts);
    free(ti);
    return 0;
}
#endif

PyDoc_STRVAR(amx_topk_doc,
             "amx_topk(x, ya, hb, m, d, mode, nk, cw, k, scores, cells)\n--\n\n"
             "Approximate top-k of <x, y_j> + h_j on AMX tiles (bfloat16 products, float32\n"
             "sums); mode 1 or 3 (see the module source). x: float32 (m, d); ya: uint16 cell\n"
             "tiles of nb blocks (nb even); hb: float32 (16 nb,), padding -inf; scores: float32\n"
             "(m, k) and cells: int64 (m, k), written. Raises RuntimeError without AMX.");

static PyObject *py_amx_topk(PyObject *self, PyObject *args) {
    Py_buffer x, ya, hb, os, oi;
    Py_ssize_t m;
    int d, mode, nk, cw, k;
    if (!PyArg_ParseTuple(args, "y*y*y*niiiiiw*w*", &x, &ya, &hb, &m, &d, &mode, &nk, &cw, &k,
                          &os, &oi))
        return NULL;
    PyObject *result = NULL;
#ifdef AEOT_AMX
    const Py_ssize_t nb = hb.len / (Py_ssize_t)(LANES * sizeof(float));
    int status = 0;
    if (!amx_ok) {
        PyErr_SetString(PyExc_RuntimeError, "AMX is not available on this CPU or kernel");
        goto done;
    }
    if (m < 0 || d < 1 || k < 1 || (mode != 1 && mode != 3) || cw < 2 || cw > 32 || cw % 2 ||
        nk < 1 || (Py_ssize_t)nk * cw < (Py_ssize_t)mode * d || nb % 2) {
        PyErr_SetString(PyExc_ValueError,
                        "need m >= 0, d >= 1, k >= 1, mode 1 or 3, even cw <= 32, "
                        "nk cw >= mode d and an even number of blocks");
        goto done;
    }
    if (check_len(&x, m * d * (Py_ssize_t)sizeof(float), "x") ||
        check_len(&ya, nb * nk * cw * LANES * (Py_ssize_t)sizeof(uint16_t), "ya") ||
        check_len(&os, m * k * (Py_ssize_t)sizeof(float), "scores") ||
        check_len(&oi, m * k * (Py_ssize_t)sizeof(int64_t), "cells"))
        goto done;
    Py_BEGIN_ALLOW_THREADS status =
        amx_search((const float *)x.buf, m, d, mode, nk, cw, (const uint16_t *)ya.buf,
                   (const float *)hb.buf, nb, k, (float *)os.buf, (int64_t *)oi.buf);
    Py_END_ALLOW_THREADS if (status < 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
#else
    PyErr_SetString(PyExc_RuntimeError, "this build has no AMX code (compiler too old)");
    goto done;
#endif
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&ya);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&os);
    PyBuffer_Release(&oi);
    return result;
}

PyDoc_STRVAR(amx_available_doc,
             "amx_available()\n--\n\nWhether amx_topk runs here (CPU, kernel and build).");

static PyObject *py_amx_available(PyObject *self, PyObject *unused) {
#ifdef AEOT_AMX
    return PyBool_FromLong(amx_ok);
#else
    return PyBool_FromLong(0);
#endif
}

PyDoc_STRVAR(isas_doc, "isas()\n--\n\nCode paths this CPU runs, best first.");

static PyObject *py_isas(PyObject *self, PyObject *unused) {
    const int best = best_isa();
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (int i = best; i >= 0; i--) {
        PyObject *name = PyUnicode_FromString(ISA_NAMES[i]);
        if (name == NULL || PyList_Append(out, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(name);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"topk", (PyCFunction)(void (*)(void))py_topk, METH_VARARGS | METH_KEYWORDS, topk_doc},
    {"rescore", py_rescore, METH_VARARGS, rescore_doc},
    {"isas", py_isas, METH_NOARGS, isas_doc},
    {"amx_topk", py_amx_topk, METH_VARARGS, amx_topk_doc},
    {"amx_available", py_amx_available, METH_NOARGS, amx_available_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_simd", "Fused exact top-k maximum inner product search (CPU).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__simd(void) {
#ifdef AEOT_AMX
    amx_init();
#endif
    return PyModule_Create(&module);
}
