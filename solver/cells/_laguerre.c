/*
 * Exact power (Laguerre) cells in the cube, 2D and 3D, one cell at a time: the compiled path of
 * solver/cells/power_diagram.py.
 *
 * Cell i is {x in cube : <x, y_i> + h_i >= <x, y_j> + h_j for all j}. The caller gives each
 * cell a list of candidate neighbours (a superset of its true neighbours: the edges of the
 * regular triangulation, or an earlier diagram's adjacency, which the caller then verifies by
 * the cells' total volume). Each cell starts as the cube and is clipped by the half-space
 * <x, y_i - y_j> + h_i - h_j >= 0 of every candidate, nearest first: candidates are ordered by
 * their power distance |c_i - y_j|^2 - |y_j|^2 - 2 h_j at a seed point c_i the caller expects in
 * the cell, so the first clips are the true neighbours and later ones find a small cell (a
 * clip whose half-space holds every vertex costs one pass over the vertices). Identical targets
 * are not resolved here (which of them keeps the cell is the caller's rule): the call reports
 * that it met one.
 *
 * A 2D cell is a polygon whose edges carry the label of the cell across (or a cube face); a 3D
 * cell is a list of polygonal faces, each with its label, over a shared vertex array. A clip is
 * Sutherland-Hodgman on every face; the new face is the cut points (and vertices on the plane)
 * ordered by angle around their mean. Measures then come from the faces with their known
 * outward normals (so the faces' orientation never matters): the cell is the union of the
 * pyramids from the mean of its vertices over its faces.
 *
 * With two rings a cell is also clipped by its candidates' candidates: an earlier diagram's
 * adjacency then covers the flips of the triangulation that a small change of the heights makes
 * (a new neighbour pair of a flip is two neighbours of a common cell).
 *
 * Output per cell: measure, mass centre; per facet with a neighbour j > i: (i, j, measure)
 * (each facet is found from both of its cells; the lower index reports it). A cell without
 * candidates is empty when there are other targets (its lifted point is not on the lower hull).
 * Cells are shared among threads in blocks; the GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64
#define MAX_THREADS 64
/* A face whose plane is within this (relative) of a cube face is that cube face. */
#define FACE_TOL 1e-12
#define FACE_OFFSET_TOL 1e-9

typedef struct {
    int d;
    int64_t n;
    const double *y, *h, *seeds;
    const int64_t *indptr, *nbr;
    int rings;
    double low, high;
} Problem;

/* ---------- growable buffers ---------- */

typedef struct {
    void *p;
    size_t n, cap, size;
} Buf;

static int reserve(Buf *b, size_t want) {
    if (want <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < want) cap *= 2;
    void *p = realloc(b->p, cap * b->size);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* ---------- polytope (2D polygon or 3D face list) ---------- */

typedef struct {
    /* vertices (d doubles each) and their power-distance excess, double-buffered */
    Buf v, v2, s, map;
    /* 2D: label of the edge starting at each vertex. 3D: faces (label, start, len) and the
       vertex ids of each face in a pool. */
    Buf lab, lab2;
    Buf fl, fs, fn, fl2, fs2, fn2, pool, pool2;
    Buf cut_a, cut_b, cut_id, ring, ang;
    int64_t nv, nf;
    /* a ball around the vertices (centre, radius), valid until the next clip */
    double centre[3], radius;
    int ball;
} Poly;

static void poly_init(Poly *P) {
    memset(P, 0, sizeof(*P));
    P->v.size = P->v2.size = P->s.size = sizeof(double);
    P->map.size = sizeof(int64_t);
    P->lab.size = P->lab2.size = sizeof(int64_t);
    P->fl.size = P->fl2.size = sizeof(int64_t);
    P->fs.size = P->fs2.size = P->fn.size = P->fn2.size = sizeof(int64_t);
    P->pool.size = P->pool2.size = sizeof(int64_t);
    P->cut_a.size = P->cut_b.size = P->cut_id.size = P->ring.size = sizeof(int64_t);
    P->ang.size = sizeof(double);
}

static void poly_free(Poly *P) {
    Buf *bs[] = {&P->v,   &P->v2,  &P->s,   &P->map,  &P->lab,   &P->lab2,  &P->fl,
                 &P->fs,  &P->fn,  &P->fl2, &P->fs2,  &P->fn2,   &P->pool,  &P->pool2,
                 &P->cut_a, &P->cut_b, &P->cut_id, &P->ring, &P->ang};
    for (size_t k = 0; k < sizeof(bs) / sizeof(bs[0]); k++) free(bs[k]->p);
}

#define V(P) ((double *)(P)->v.p)
#define I64(b) ((int64_t *)(b).p)
#define F64(b) ((double *)(b).p)

/* Boundary labels: -1 - f for cube face f (f < d: x_f = low; f >= d: x_{f-d} = high). */

static int square_init(Poly *P, double lo, double hi) {
    if (reserve(&P->v, 8) || reserve(&P->lab, 4)) return -1;
    double *v = V(P);
    const double c[4][2] = {{lo, lo}, {hi, lo}, {hi, hi}, {lo, hi}};
    const int64_t lab[4] = {-2, -1 - 2, -1 - 3, -1}; /* bottom y=lo, right x=hi, top, left */
    for (int k = 0; k < 4; k++) {
        v[2 * k] = c[k][0];
        v[2 * k + 1] = c[k][1];
        I64(P->lab)[k] = lab[k];
    }
    P->nv = 4;
    P->ball = 0;
    return 0;
}

static int cube_init(Poly *P, double lo, double hi) {
    if (reserve(&P->v, 24) || reserve(&P->fl, 6) || reserve(&P->fs, 6) || reserve(&P->fn, 6) ||
        reserve(&P->pool, 24))
        return -1;
    double *v = V(P);
    for (int k = 0; k < 8; k++) {
        v[3 * k] = (k & 1) ? hi : lo;
        v[3 * k + 1] = (k & 2) ? hi : lo;
        v[3 * k + 2] = (k & 4) ? hi : lo;
    }
    /* faces: x=lo, y=lo, z=lo, x=hi, y=hi, z=hi (labels -1 .. -6) */
    const int64_t f[6][4] = {{0, 4, 6, 2}, {0, 1, 5, 4}, {0, 2, 3, 1},
                             {1, 3, 7, 5}, {2, 6, 7, 3}, {4, 5, 7, 6}};
    for (int k = 0; k < 6; k++) {
        I64(P->fl)[k] = -1 - k;
        I64(P->fs)[k] = 4 * k;
        I64(P->fn)[k] = 4;
        for (int m = 0; m < 4; m++) I64(P->pool)[4 * k + m] = f[k][m];
    }
    P->nv = 8;
    P->nf = 6;
    P->ball = 0;
    return 0;
}

/* Clip a 2D polygon to <a, x> + b >= 0; the new edge is labelled j. Returns -1 on memory. */
static int clip2(Poly *P, const double *a, double b, int64_t j) {
    const int64_t n = P->nv;
    if (reserve(&P->s, n)) return -1;
    double *s = F64(P->s), *v = V(P);
    int neg = 0, pos = 0;
    for (int64_t k = 0; k < n; k++) {
        s[k] = a[0] * v[2 * k] + a[1] * v[2 * k + 1] + b;
        if (s[k] < 0) neg = 1;
        else pos = 1;
    }
    if (!neg) return 0;
    if (!pos) {
        P->nv = 0;
        return 0;
    }
    if (reserve(&P->v2, 2 * (n + 2)) || reserve(&P->lab2, n + 2)) return -1;
    double *o = F64(P->v2);
    int64_t *ol = I64(P->lab2), *lab = I64(P->lab), m = 0;
    for (int64_t k = 0; k < n; k++) {
        int64_t q = k + 1 == n ? 0 : k + 1;
        if (s[k] >= 0) {
            o[2 * m] = v[2 * k];
            o[2 * m + 1] = v[2 * k + 1];
            ol[m++] = lab[k];
        }
        if ((s[k] >= 0) != (s[q] >= 0)) {
            double t = s[k] / (s[k] - s[q]);
            o[2 * m] = v[2 * k] + t * (v[2 * q] - v[2 * k]);
            o[2 * m + 1] = v[2 * k + 1] + t * (v[2 * q + 1] - v[2 * k + 1]);
            ol[m++] = s[k] >= 0 ? j : lab[k];
        }
    }
    Buf tv = P->v, tl = P->lab;
    P->v = P->v2;
    P->v2 = tv;
    P->lab = P->lab2;
    P->lab2 = tl;
    P->nv = m >= 3 ? m : 0;
    return 0;
}

/* Clip a 3D face list to <a, x> + b >= 0; the new face is labelled j. */
static int clip3(Poly *P, const double *a, double b, int64_t j) {
    const int64_t n = P->nv;
    if (reserve(&P->s, n) || reserve(&P->map, n)) return -1;
    double *s = F64(P->s), *v = V(P);
    int neg = 0, pos = 0;
    for (int64_t k = 0; k < n; k++) {
        s[k] = a[0] * v[3 * k] + a[1] * v[3 * k + 1] + a[2] * v[3 * k + 2] + b;
        if (s[k] < 0) neg = 1;
        else pos = 1;
    }
    if (!neg) return 0;
    if (!pos) {
        P->nv = P->nf = 0;
        return 0;
    }
    /* kept vertices first */
    int64_t *map = I64(P->map), m = 0;
    for (int64_t k = 0; k < n; k++) map[k] = s[k] >= 0 ? m++ : -1;
    int64_t kept = m;
    /* vertex capacity: kept + one per cut edge (at most the pool size) */
    int64_t pool_len = 0;
    for (int64_t f = 0; f < P->nf; f++) pool_len += I64(P->fn)[f];
    if (reserve(&P->v2, 3 * (kept + pool_len)) || reserve(&P->pool2, 2 * pool_len + 8) ||
        reserve(&P->fl2, P->nf + 1) || reserve(&P->fs2, P->nf + 1) ||
        reserve(&P->fn2, P->nf + 1) || reserve(&P->cut_a, pool_len) ||
        reserve(&P->cut_b, pool_len) || reserve(&P->cut_id, pool_len))
        return -1;
    double *o = F64(P->v2);
    for (int64_t k = 0; k < n; k++)
        if (map[k] >= 0) memcpy(o + 3 * map[k], v + 3 * k, 3 * sizeof(double));
    int64_t n_cut = 0, *ca = I64(P->cut_a), *cb = I64(P->cut_b), *cid = I64(P->cut_id);
    int64_t *pool2 = I64(P->pool2), *fl2 = I64(P->fl2), *fs2 = I64(P->fs2), *fn2 = I64(P->fn2);
    int64_t np = 0, nf = 0;
    for (int64_t f = 0; f < P->nf; f++) {
        const int64_t *ids = I64(P->pool) + I64(P->fs)[f];
        const int64_t len = I64(P->fn)[f];
        const int64_t start = np;
        for (int64_t k = 0; k < len; k++) {
            int64_t p = ids[k], q = ids[k + 1 == len ? 0 : k + 1];
            if (s[p] >= 0) pool2[np++] = map[p];
            if ((s[p] >= 0) != (s[q] >= 0)) {
                int64_t lo = p < q ? p : q, hi = p < q ? q : p, id = -1;
                for (int64_t c = 0; c < n_cut; c++)
                    if (ca[c] == lo && cb[c] == hi) {
                        id = cid[c];
                        break;
                    }
                if (id < 0) {
                    double t = s[lo] / (s[lo] - s[hi]);
                    id = m++;
                    for (int c = 0; c < 3; c++) o[3 * id + c] = v[3 * lo + c] + t * (v[3 * hi + c] - v[3 * lo + c]);
                    ca[n_cut] = lo;
                    cb[n_cut] = hi;
                    cid[n_cut++] = id;
                }
                pool2[np++] = id;
            }
        }
        if (np - start >= 3) {
            fl2[nf] = I64(P->fl)[f];
            fs2[nf] = start;
            fn2[nf++] = np - start;
        } else {
            np = start;
        }
    }
    /* the new face: cut points and kept vertices on the plane, ordered by angle */
    int64_t ring_n = 0;
    if (reserve(&P->ring, n_cut + kept) || reserve(&P->ang, n_cut + kept)) return -1;
    int64_t *ring = I64(P->ring);
    for (int64_t c = 0; c < n_cut; c++) ring[ring_n++] = cid[c];
    for (int64_t k = 0; k < n; k++)
        if (s[k] == 0.0) ring[ring_n++] = map[k];
    if (ring_n >= 3) {
        double c0[3] = {0, 0, 0};
        for (int64_t r = 0; r < ring_n; r++)
            for (int c = 0; c < 3; c++) c0[c] += o[3 * ring[r] + c];
        for (int c = 0; c < 3; c++) c0[c] /= (double)ring_n;
        /* basis (u, w) of the plane with normal a */
        int ax = fabs(a[0]) <= fabs(a[1]) ? (fabs(a[0]) <= fabs(a[2]) ? 0 : 2)
                                          : (fabs(a[1]) <= fabs(a[2]) ? 1 : 2);
        double e[3] = {0, 0, 0}, u[3], w[3];
        e[ax] = 1.0;
        u[0] = a[1] * e[2] - a[2] * e[1];
        u[1] = a[2] * e[0] - a[0] * e[2];
        u[2] = a[0] * e[1] - a[1] * e[0];
        w[0] = a[1] * u[2] - a[2] * u[1];
        w[1] = a[2] * u[0] - a[0] * u[2];
        w[2] = a[0] * u[1] - a[1] * u[0];
        double *ang = F64(P->ang);
        for (int64_t r = 0; r < ring_n; r++) {
            const double *p = o + 3 * ring[r];
            double dx = p[0] - c0[0], dy = p[1] - c0[1], dz = p[2] - c0[2];
            ang[r] = atan2(dx * w[0] + dy * w[1] + dz * w[2], dx * u[0] + dy * u[1] + dz * u[2]);
        }
        for (int64_t r = 1; r < ring_n; r++) { /* insertion sort: rings are small */
            double ka = ang[r];
            int64_t kr = ring[r], q = r - 1;
            while (q >= 0 && ang[q] > ka) {
                ang[q + 1] = ang[q];
                ring[q + 1] = ring[q];
                q--;
            }
            ang[q + 1] = ka;
            ring[q + 1] = kr;
        }
        if (reserve(&P->pool2, np + ring_n)) return -1;
        pool2 = I64(P->pool2);
        for (int64_t r = 0; r < ring_n; r++) pool2[np + r] = ring[r];
        fl2[nf] = j;
        fs2[nf] = np;
        fn2[nf++] = ring_n;
        np += ring_n;
    }
    Buf t;
    t = P->v, P->v = P->v2, P->v2 = t;
    t = P->pool, P->pool = P->pool2, P->pool2 = t;
    t = P->fl, P->fl = P->fl2, P->fl2 = t;
    t = P->fs, P->fs = P->fs2, P->fs2 = t;
    t = P->fn, P->fn = P->fn2, P->fn2 = t;
    P->nv = m;
    P->nf = nf;
    if (nf < 4) P->nv = P->nf = 0;
    return 0;
}

/* ---------- one cell ---------- */

typedef struct {
    Buf owner, nbr, measure;
    Buf blocks; /* per block of cells: first cell, first and end facet in this buffer */
    int duplicate;
} Out;

static int emit(Out *out, int64_t i, int64_t j, double m) {
    if (reserve(&out->owner, out->owner.n + 1) || reserve(&out->nbr, out->nbr.n + 1) ||
        reserve(&out->measure, out->measure.n + 1))
        return -1;
    I64(out->owner)[out->owner.n++] = i;
    I64(out->nbr)[out->nbr.n++] = j;
    F64(out->measure)[out->measure.n++] = m;
    return 0;
}

/* Outward unit normal of a face label for cell i. */
static void normal_of(const Problem *t, int64_t i, int64_t lab, double *nrm) {
    const int d = t->d;
    if (lab < 0) {
        int f = (int)(-1 - lab);
        for (int k = 0; k < d; k++) nrm[k] = 0.0;
        nrm[f % d] = f < d ? -1.0 : 1.0;
        return;
    }
    double s = 0.0;
    for (int k = 0; k < d; k++) {
        nrm[k] = t->y[lab * d + k] - t->y[i * d + k];
        s += nrm[k] * nrm[k];
    }
    s = sqrt(s);
    for (int k = 0; k < d; k++) nrm[k] /= s;
}

/* A neighbour's facet lying in a cube face is the cube's (its cell is outside the cube). */
static int in_cube_face(const Problem *t, const double *nrm, const double *c) {
    const int d = t->d;
    const double side = t->high - t->low;
    for (int k = 0; k < d; k++)
        if (fabs(nrm[k]) >= 1.0 - FACE_TOL &&
            (fabs(c[k] - t->low) <= FACE_OFFSET_TOL * side ||
             fabs(c[k] - t->high) <= FACE_OFFSET_TOL * side))
            return 1;
    return 0;
}

static int measure_cell(const Problem *t, int64_t i, Poly *P, double *vol, double *cen, Out *out) {
    const int d = t->d;
    *vol = 0.0;
    for (int k = 0; k < d; k++) cen[k] = NAN;
    if (P->nv == 0) return 0;
    const double *v = V(P);
    double r[3] = {0, 0, 0}, mom[3] = {0, 0, 0}, total = 0.0, nrm[3];
    for (int64_t k = 0; k < P->nv; k++)
        for (int c = 0; c < d; c++) r[c] += v[d * k + c];
    for (int c = 0; c < d; c++) r[c] /= (double)P->nv;
    if (d == 2) {
        const int64_t *lab = I64(P->lab);
        for (int64_t k = 0; k < P->nv; k++) {
            int64_t q = k + 1 == P->nv ? 0 : k + 1;
            double ex = v[2 * q] - v[2 * k], ey = v[2 * q + 1] - v[2 * k + 1];
            double len = sqrt(ex * ex + ey * ey);
            if (len <= 0.0) continue;
            double mid[2] = {v[2 * k] + 0.5 * ex, v[2 * k + 1] + 0.5 * ey};
            normal_of(t, i, lab[k], nrm);
            double height = nrm[0] * (mid[0] - r[0]) + nrm[1] * (mid[1] - r[1]);
            double area = 0.5 * len * height;
            total += area;
            for (int c = 0; c < 2; c++) mom[c] += area * (r[c] + (2.0 / 3.0) * (mid[c] - r[c]));
            if (lab[k] > i && !in_cube_face(t, nrm, mid))
                if (emit(out, i, lab[k], len)) return -1;
        }
    } else {
        for (int64_t f = 0; f < P->nf; f++) {
            const int64_t *ids = I64(P->pool) + I64(P->fs)[f];
            const int64_t len = I64(P->fn)[f], lab = I64(P->fl)[f];
            normal_of(t, i, lab, nrm);
            const double *p0 = v + 3 * ids[0];
            double area = 0.0, fc[3] = {0, 0, 0};
            for (int64_t k = 1; k + 1 < len; k++) {
                const double *p1 = v + 3 * ids[k], *p2 = v + 3 * ids[k + 1];
                double e1[3] = {p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]};
                double e2[3] = {p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]};
                double cr = 0.5 * (nrm[0] * (e1[1] * e2[2] - e1[2] * e2[1]) +
                                   nrm[1] * (e1[2] * e2[0] - e1[0] * e2[2]) +
                                   nrm[2] * (e1[0] * e2[1] - e1[1] * e2[0]));
                area += cr;
                for (int c = 0; c < 3; c++) fc[c] += cr * (p0[c] + p1[c] + p2[c]) / 3.0;
            }
            if (area == 0.0) continue;
            for (int c = 0; c < 3; c++) fc[c] /= area;
            area = fabs(area);
            double height =
                nrm[0] * (fc[0] - r[0]) + nrm[1] * (fc[1] - r[1]) + nrm[2] * (fc[2] - r[2]);
            double pyr = area * height / 3.0;
            total += pyr;
            for (int c = 0; c < 3; c++) mom[c] += pyr * (r[c] + 0.75 * (fc[c] - r[c]));
            if (lab > i && !in_cube_face(t, nrm, fc))
                if (emit(out, i, lab, area)) return -1;
        }
    }
    if (total > 0.0) {
        *vol = total;
        for (int c = 0; c < d; c++) cen[c] = mom[c] / total;
    }
    return 0;
}

typedef struct {
    double key;
    int64_t j;
} Entry;

static int by_key(const void *p, const void *q) {
    double a = ((const Entry *)p)->key, b = ((const Entry *)q)->key;
    return (a > b) - (a < b);
}

/* Sort by key (insertion sort for the short lists of most cells). */
static void sort_entries(Entry *e, int64_t m) {
    if (m > 32) {
        qsort(e, (size_t)m, sizeof(Entry), by_key);
        return;
    }
    for (int64_t k = 1; k < m; k++) {
        Entry x = e[k];
        int64_t q = k - 1;
        while (q >= 0 && e[q].key > x.key) {
            e[q + 1] = e[q];
            q--;
        }
        e[q + 1] = x;
    }
}

/* Clip cell i by the half-space of target j (identical targets are only reported). */
static int clip_by(const Problem *t, int64_t i, Poly *P, int64_t j, Out *out) {
    const int d = t->d;
    const double *yi = t->y + i * d, *yj = t->y + j * d;
    double a[3];
    int same = 1;
    if (j == i) return 0;
    for (int c = 0; c < d; c++) {
        a[c] = yi[c] - yj[c];
        if (a[c] != 0.0) same = 0;
    }
    if (same) {
        out->duplicate = 1;
        return 0;
    }
    const double b = t->h[i] - t->h[j];
    /* Most candidates do not cut: the ball around the vertices answers that in O(d). */
    if (!P->ball) {
        const double *v = V(P);
        double r2 = 0.0;
        for (int c = 0; c < d; c++) P->centre[c] = 0.0;
        for (int64_t k = 0; k < P->nv; k++)
            for (int c = 0; c < d; c++) P->centre[c] += v[d * k + c];
        for (int c = 0; c < d; c++) P->centre[c] /= (double)P->nv;
        for (int64_t k = 0; k < P->nv; k++) {
            double e = 0.0;
            for (int c = 0; c < d; c++) e += (v[d * k + c] - P->centre[c]) * (v[d * k + c] - P->centre[c]);
            if (e > r2) r2 = e;
        }
        /* widened by a relative 1e-9: the test may only keep a candidate, never drop one */
        P->radius = sqrt(r2) * (1.0 + 1e-9) + 1e-15;
        P->ball = 1;
    }
    double at = b, norm = 0.0;
    for (int c = 0; c < d; c++) {
        at += a[c] * P->centre[c];
        norm += a[c] * a[c];
    }
    if (at - P->radius * sqrt(norm) > 1e-12 * (fabs(at) + fabs(b))) return 0;
    P->ball = 0;
    return d == 2 ? clip2(P, a, b, j) : clip3(P, a, b, j);
}

static int one_cell(const Problem *t, int64_t i, Poly *P, Buf *order, Buf *marks, double *vol,
                    double *cen, Out *out) {
    const int d = t->d;
    const double *ci = t->seeds + i * d;
    const int64_t begin = t->indptr[i], end = t->indptr[i + 1];
    if ((d == 2 ? square_init(P, t->low, t->high) : cube_init(P, t->low, t->high))) return -1;
    if (end == begin && t->n > 1) P->nv = P->nf = 0;
    /* the candidates, and with two rings their candidates too (each once) */
    int64_t m = 0, *stamp = I64(*marks);
    stamp[i] = i + 1;
    for (int64_t k = begin; k < end; k++) {
        const int64_t j = t->nbr[k];
        if (stamp[j] == i + 1) continue;
        stamp[j] = i + 1;
        if (reserve(order, (size_t)m + 1)) return -1;
        ((Entry *)order->p)[m++].j = j;
    }
    for (int64_t k = begin; k < end && t->rings > 1; k++) {
        const int64_t j = t->nbr[k];
        for (int64_t q = t->indptr[j]; q < t->indptr[j + 1]; q++) {
            const int64_t l = t->nbr[q];
            if (stamp[l] == i + 1) continue;
            stamp[l] = i + 1;
            if (reserve(order, (size_t)m + 1)) return -1;
            ((Entry *)order->p)[m++].j = l;
        }
    }
    if (reserve(order, (size_t)m + 2 * (size_t)d)) return -1;
    Entry *e = (Entry *)order->p;
    for (int64_t k = 0; k < m; k++) {
        const int64_t j = e[k].j;
        double key = -2.0 * t->h[j];
        for (int c = 0; c < d; c++) key += t->y[j * d + c] * (t->y[j * d + c] - 2.0 * ci[c]);
        e[k].key = key;
    }
    sort_entries(e, m);
    for (int64_t k = 0; k < m && P->nv > 0; k++)
        if (clip_by(t, i, P, e[k].j, out)) return -1;
    /* Again from the cube with the neighbours found, in index order: the cell (to the last bit)
       is then a function of the targets, the heights and its neighbours, not of the
       candidates or the seeds (a resumed fit repeats an uninterrupted one exactly). */
    if (P->nv > 0) {
        int64_t n_lab = 0;
        const int64_t *lab = d == 2 ? I64(P->lab) : I64(P->fl);
        const int64_t n_faces = d == 2 ? P->nv : P->nf;
        for (int64_t f = 0; f < n_faces; f++)
            if (lab[f] >= 0) {
                e[n_lab].j = lab[f];
                e[n_lab++].key = (double)lab[f];
            }
        sort_entries(e, n_lab);
        if ((d == 2 ? square_init(P, t->low, t->high) : cube_init(P, t->low, t->high))) return -1;
        for (int64_t k = 0; k < n_lab && P->nv > 0; k++)
            if ((k == 0 || e[k].j != e[k - 1].j) && clip_by(t, i, P, e[k].j, out)) return -1;
    }
    return measure_cell(t, i, P, vol, cen, out);
}

/* ---------- threads ---------- */

typedef struct {
    const Problem *t;
    double *vol, *cen;
    int64_t *next;
    Out out;
    int error;
} Job;

static void *worker(void *arg) {
    Job *job = (Job *)arg;
    const Problem *t = job->t;
    Poly P;
    poly_init(&P);
    Buf order = {NULL, 0, 0, sizeof(Entry)}, marks = {NULL, 0, 0, sizeof(int64_t)};
    if (reserve(&marks, (size_t)t->n)) {
        job->error = 1;
        return NULL;
    }
    memset(marks.p, 0, (size_t)t->n * sizeof(int64_t));
    for (;;) {
        int64_t start = __atomic_fetch_add(job->next, BLOCK, __ATOMIC_RELAXED);
        if (start >= t->n) break;
        int64_t stop = start + BLOCK < t->n ? start + BLOCK : t->n;
        Buf *bl = &job->out.blocks;
        if (reserve(bl, bl->n + 3)) {
            job->error = 1;
            break;
        }
        I64(*bl)[bl->n] = start;
        I64(*bl)[bl->n + 1] = (int64_t)job->out.owner.n;
        for (int64_t i = start; i < stop; i++)
            if (one_cell(t, i, &P, &order, &marks, job->vol + i, job->cen + i * t->d, &job->out)) {
                job->error = 1;
                break;
            }
        I64(*bl)[bl->n + 2] = (int64_t)job->out.owner.n;
        bl->n += 3;
        if (job->error) break;
    }
    poly_free(&P);
    free(order.p);
    free(marks.p);
    return NULL;
}

static int check_len(Py_buffer *buf, Py_ssize_t want, const char *what) {
    if (buf->len != want) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", what, buf->len, want);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(cells_doc,
             "cells(y, h, seeds, indptr, neighbours, n, d, rings, low, high, threads, volumes,\n"
             "centroids)\n--\n\n"
             "Power cells of n targets y (float64 (n, d), d = 2 or 3) with heights h\n"
             "(float64 (n,)) in the cube [low, high]^d, cell i clipped by its candidates\n"
             "neighbours[indptr[i]:indptr[i + 1]] (int64), and with rings = 2 by their\n"
             "candidates as well, in the order of their power distance\n"
             "at seeds[i] (float64 (n, d); speed only). Writes volumes (float64 (n,)) and\n"
             "centroids (float64 (n, d), nan for empty cells); returns (owners, neighbours,\n"
             "measures, duplicate): bytes of int64, int64, float64, one entry per facet\n"
             "(owner < neighbour), and whether two targets were identical. A cell without\n"
             "candidates is empty when n > 1.");

static PyObject *py_cells(PyObject *self, PyObject *args) {
    Py_buffer yb, hb, sb, ib, nb, vb, cb;
    Py_ssize_t n;
    int d, threads;
    double low, high;
    int rings;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*niiddiw*w*", &yb, &hb, &sb, &ib, &nb, &n, &d, &rings,
                          &low, &high, &threads, &vb, &cb))
        return NULL;
    PyObject *result = NULL;
    Problem t;
    memset(&t, 0, sizeof(t));
    Job jobs[MAX_THREADS];
    int n_jobs = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
    memset(jobs, 0, sizeof(jobs));
    if ((d != 2 && d != 3) || n < 1) {
        PyErr_SetString(PyExc_ValueError, "need d = 2 or 3 and n >= 1");
        goto done;
    }
    if (check_len(&yb, n * d * (Py_ssize_t)sizeof(double), "y") ||
        check_len(&hb, n * (Py_ssize_t)sizeof(double), "h") ||
        check_len(&sb, n * d * (Py_ssize_t)sizeof(double), "seeds") ||
        check_len(&ib, (n + 1) * (Py_ssize_t)sizeof(int64_t), "indptr") ||
        nb.len % (Py_ssize_t)sizeof(int64_t) != 0 ||
        check_len(&vb, n * (Py_ssize_t)sizeof(double), "volumes") ||
        check_len(&cb, n * d * (Py_ssize_t)sizeof(double), "centroids"))
        goto done;
    t.d = d;
    t.n = n;
    t.y = (const double *)yb.buf;
    t.h = (const double *)hb.buf;
    t.seeds = (const double *)sb.buf;
    t.low = low;
    t.high = high;
    t.rings = rings;
    t.indptr = (const int64_t *)ib.buf;
    t.nbr = (const int64_t *)nb.buf;
    if (t.indptr[0] != 0 || t.indptr[n] != (int64_t)(nb.len / (Py_ssize_t)sizeof(int64_t))) {
        PyErr_SetString(PyExc_ValueError, "indptr must start at 0 and end at len(neighbours)");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (t.indptr[i + 1] < t.indptr[i]) {
            PyErr_SetString(PyExc_ValueError, "indptr must be non-decreasing");
            goto done;
        }
    for (int64_t k = 0; k < t.indptr[n]; k++)
        if (t.nbr[k] < 0 || t.nbr[k] >= n) {
            PyErr_SetString(PyExc_ValueError, "neighbours must be cell indices");
            goto done;
        }
    int64_t next = 0;
    int error = 0, duplicate = 0;
    Py_BEGIN_ALLOW_THREADS;
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int k = 0; k < n_jobs; k++) {
        jobs[k].t = &t;
        jobs[k].vol = (double *)vb.buf;
        jobs[k].cen = (double *)cb.buf;
        jobs[k].next = &next;
        jobs[k].out.owner.size = jobs[k].out.nbr.size = sizeof(int64_t);
        jobs[k].out.measure.size = sizeof(double);
        jobs[k].out.blocks.size = sizeof(int64_t);
    }
    for (int k = 1; k < n_jobs; k++)
        started[k] = pthread_create(&tid[k], NULL, worker, &jobs[k]) == 0;
    worker(&jobs[0]);
    for (int k = 1; k < n_jobs; k++)
        if (started[k]) pthread_join(tid[k], NULL);
    for (int k = 1; k < n_jobs; k++)
        if (!started[k]) worker(&jobs[k]); /* a thread that did not start: run its share here */
    for (int k = 0; k < n_jobs; k++) {
        error |= jobs[k].error;
        duplicate |= jobs[k].out.duplicate;
    }
    Py_END_ALLOW_THREADS;
    if (error) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    for (int k = 0; k < n_jobs; k++) total += jobs[k].out.owner.n;
    PyObject *own = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * sizeof(int64_t)));
    PyObject *nbr = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * sizeof(int64_t)));
    PyObject *mes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * sizeof(double)));
    if (own && nbr && mes) {
        /* blocks in cell order, whichever thread computed them: a deterministic facet list */
        /* each thread took its blocks in increasing order: merge with one cursor each */
        size_t at = 0, cursor[MAX_THREADS] = {0};
        for (int64_t start = 0; start < n; start += BLOCK) {
            for (int k = 0; k < n_jobs; k++) {
                const Buf *bl = &jobs[k].out.blocks;
                const int64_t *b = (const int64_t *)bl->p;
                size_t q = cursor[k];
                if (q >= bl->n || b[q] != start) continue;
                cursor[k] += 3;
                size_t m = (size_t)(b[q + 2] - b[q + 1]), from = (size_t)b[q + 1];
                memcpy(PyBytes_AS_STRING(own) + at * 8, I64(jobs[k].out.owner) + from, m * 8);
                memcpy(PyBytes_AS_STRING(nbr) + at * 8, I64(jobs[k].out.nbr) + from, m * 8);
                memcpy(PyBytes_AS_STRING(mes) + at * 8, F64(jobs[k].out.measure) + from, m * 8);
                at += m;
                break;
            }
        }
        result = Py_BuildValue("NNNO", own, nbr, mes, duplicate ? Py_True : Py_False);
    } else {
        Py_XDECREF(own);
        Py_XDECREF(nbr);
        Py_XDECREF(mes);
    }
done:
    for (int k = 0; k < MAX_THREADS; k++) {
        free(jobs[k].out.owner.p);
        free(jobs[k].out.nbr.p);
        free(jobs[k].out.measure.p);
        free(jobs[k].out.blocks.p);
    }
    PyBuffer_Release(&yb);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&nb);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&cb);
    return result;
}

static PyMethodDef methods[] = {
    {"cells", py_cells, METH_VARARGS, cells_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_laguerre", "Exact power cells in 2D and 3D (CPU).", -1, methods,
};

PyMODINIT_FUNC PyInit__laguerre(void) { return PyModule_Create(&module); }
