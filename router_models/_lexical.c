/* The lexical featurizer's hashing and counting in one pass (router_models/lexical.py).
 *
 * hash_counts(text: bytes, bits: int) -> (indices: bytes, values: bytes)
 * structure(raw, sample, markers..., conversation counts) -> the 16 structure features
 * conversation(messages, tools) -> (raw, 8 counts) of a plain ASCII conversation, or None
 * route(raw, bits, markers..., conversation counts, projection, abilities, biases)
 *     -> (z: list, scores: list): what the gateway calls, whitespace collapsing, structure,
 *        hashing and projection in one pass
 *
 * `text` is the lower-cased, whitespace-collapsed UTF-8 of a conversation. The result is the
 * same sparse block the numpy path in lexical.py computes: sorted unique bucket ids of the
 * byte 3/4/5-grams, then of the word 1/2-grams, as native intp, and for each block
 * log1p(count) scaled to unit L2 norm, as float32. The numpy path costs ~30 array calls of a
 * few microseconds each, which is most of a routing decision on a short prompt; this costs
 * about a microsecond per hundred bytes. tests/test_router_native.py checks that both paths
 * give the same features.
 *
 * The GIL is held throughout, so the module's scratch tables need no lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define P 0x01000193u      /* FNV-32 prime, as _P in lexical.py */
#define GOLD 0x9E3779B1u   /* as _GOLD */
#define BIGRAM 0x2545F491u /* word bigram mixer, as in lexical.py */
#define ACC 32             /* projection columns accumulated at once */
#define PREFETCH 8         /* projection rows requested ahead of their use */

typedef float v4f __attribute__((vector_size(16)));

static uint32_t *counts = NULL; /* one slot per bucket, all zero between calls */
static uint64_t *bitmap = NULL; /* one bit per bucket that has a count, all zero between calls */
static size_t cap = 0;
static float log1p_small[256]; /* log1pf(c) for the small counts nearly every bucket has */

static int word_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c >= 128;
}

static int ensure(size_t n_hash) {
    if (cap >= n_hash) return 0;
    uint32_t *c = calloc(n_hash, sizeof(uint32_t));
    uint64_t *m = calloc(n_hash / 64 + 1, sizeof(uint64_t));
    if (c == NULL || m == NULL) {
        free(c);
        free(m);
        PyErr_NoMemory();
        return -1;
    }
    free(counts);
    free(bitmap);
    counts = c;
    bitmap = m;
    cap = n_hash;
    return 0;
}

typedef struct {
    unsigned shift;
} Block;

static inline void hit(const Block *b, uint32_t h, uint32_t seed) {
    uint32_t id = ((h + seed) * GOLD) >> b->shift;
    if (counts[id]++ == 0) bitmap[id >> 6] |= (uint64_t)1 << (id & 63);
}

/* Write the block's ids (ascending, read off the bitmap: no sort) and their log1p(count)
 * scaled to unit L2 norm at out_idx/out_val; leave counts and bitmap zeroed. */
static Py_ssize_t flush(size_t n_hash, Py_ssize_t *out_idx, float *out_val) {
    Py_ssize_t n = 0;
    double norm2 = 0.0;
    size_t words = (n_hash + 63) / 64;
    for (size_t w = 0; w < words; w++) {
        uint64_t x = bitmap[w];
        if (x == 0) continue;
        bitmap[w] = 0;
        while (x) {
            uint32_t id = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(x));
            x &= x - 1;
            uint32_t c = counts[id];
            counts[id] = 0;
            float v = c < 256 ? log1p_small[c] : log1pf((float)c);
            out_idx[n] = (Py_ssize_t)id;
            out_val[n] = v;
            norm2 += (double)v * v;
            n++;
        }
    }
    if (n == 0) return 0;
    float norm = (float)sqrt(norm2);
    for (Py_ssize_t i = 0; i < n; i++) out_val[i] /= norm;
    return n;
}

/* Hash and count `s` into the scratch outputs; returns the number of (index, value) pairs. */
static Py_ssize_t *out_idx = NULL;
static float *out_val = NULL;
static Py_ssize_t out_cap = 0;

static Py_ssize_t featurize(const unsigned char *s, Py_ssize_t n, int bits) {
    size_t n_hash = (size_t)1 << bits;
    if (ensure(n_hash) < 0) return -1;
    /* at most 3n char grams and 2n word grams, bounded by the buckets of each block */
    Py_ssize_t max_c = 3 * n < (Py_ssize_t)n_hash ? 3 * n : (Py_ssize_t)n_hash;
    Py_ssize_t max_w = 2 * n < (Py_ssize_t)n_hash ? 2 * n : (Py_ssize_t)n_hash;
    Py_ssize_t need = max_c + max_w + 1;
    if (need > out_cap) {
        Py_ssize_t *oi = malloc((size_t)need * sizeof(Py_ssize_t));
        float *ov = malloc((size_t)need * sizeof(float));
        if (oi == NULL || ov == NULL) {
            free(oi);
            free(ov);
            PyErr_NoMemory();
            return -1;
        }
        free(out_idx);
        free(out_val);
        out_idx = oi;
        out_val = ov;
        out_cap = need;
    }
    Block b = {(unsigned)(32 - bits)};
    Py_ssize_t out = 0;

    /* byte 3/4/5-grams: g3 = s0 P^2 + s1 P + s2, g4 = g3 P + s3, g5 = g4 P + s4 (mod 2^32) */
    for (Py_ssize_t i = 0; i + 2 < n; i++) {
        uint32_t g = (uint32_t)s[i] * (P * P) + (uint32_t)s[i + 1] * P + s[i + 2];
        hit(&b, g, 3);
        if (i + 3 < n) {
            g = g * P + s[i + 3];
            hit(&b, g, 4);
            if (i + 4 < n) {
                g = g * P + s[i + 4];
                hit(&b, g, 5);
            }
        }
    }
    out += flush(n_hash, out_idx + out, out_val + out);

    /* words: runs of word bytes hashed as sum s[k] P^k; bigrams wh[i] * BIGRAM + wh[i+1] */
    int have_prev = 0;
    uint32_t prev = 0;
    Py_ssize_t i = 0;
    while (i < n) {
        if (!word_byte(s[i])) {
            i++;
            continue;
        }
        uint32_t wh = 0, pk = 1;
        while (i < n && word_byte(s[i])) {
            wh += (uint32_t)s[i] * pk;
            pk *= P;
            i++;
        }
        hit(&b, wh, 11);
        if (have_prev) hit(&b, prev * BIGRAM + wh, 12);
        prev = wh;
        have_prev = 1;
    }
    out += flush(n_hash, out_idx + out, out_val + out);
    return out;
}

static int check_bits(int bits) {
    if (bits < 4 || bits > 24) {
        PyErr_SetString(PyExc_ValueError, "bits must be between 4 and 24");
        return -1;
    }
    return 0;
}

static PyObject *hash_counts(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer buf;
    int bits;
    if (!PyArg_ParseTuple(args, "y*i", &buf, &bits)) return NULL;
    Py_ssize_t n = check_bits(bits) < 0 ? -1 : featurize(buf.buf, buf.len, bits);
    PyBuffer_Release(&buf);
    if (n < 0) return NULL;
    return Py_BuildValue("(y#y#)", (const char *)out_idx, n * (Py_ssize_t)sizeof(Py_ssize_t),
                         (const char *)out_val, n * (Py_ssize_t)sizeof(float));
}

#define MAX_RANK 256 /* projection columns (the prompt vector's length) */

/* Check the shapes of projection (float32, (2^bits + n_struct, k)), abilities (float64,
 * (m, k)) and biases (float64, (m,)); set *k and *m. */
static int check_shapes(int bits, Py_ssize_t n_struct, const Py_buffer *proj, const Py_buffer *ab,
                        const Py_buffer *bs, Py_ssize_t *k, Py_ssize_t *m) {
    if (check_bits(bits) < 0) return -1;
    Py_ssize_t rows = ((Py_ssize_t)1 << bits) + n_struct;
    if (proj->len == 0 || proj->len % ((Py_ssize_t)sizeof(float) * rows) != 0) {
        PyErr_Format(PyExc_ValueError, "projection must be float32 with %zd rows", rows);
        return -1;
    }
    *k = proj->len / ((Py_ssize_t)sizeof(float) * rows);
    if (*k > MAX_RANK) {
        PyErr_Format(PyExc_ValueError, "the projection has more than %d columns", MAX_RANK);
        return -1;
    }
    *m = bs->len / (Py_ssize_t)sizeof(double);
    if (bs->len % (Py_ssize_t)sizeof(double) != 0 ||
        ab->len != *m * *k * (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "abilities must be float64 (%zd, %zd) like biases", *m,
                     *k);
        return -1;
    }
    return 0;
}

/* z[0:k] = the n hashed (out_idx, out_val) pairs and the n_struct structure values (cast to
 * float32) times the float32 (2^bits + n_struct, k) projection `pm`. */
static void project_into(Py_ssize_t n, int bits, const double *st, Py_ssize_t n_struct,
                         const float *pm, Py_ssize_t k, double *z) {
    Py_ssize_t n_hash = (Py_ssize_t)1 << bits;
    /* accumulate in float32 blocks of ACC columns kept in SIMD registers (4-wide vectors:
     * SSE2 is all the x86-64 baseline promises), then in float64 across blocks: as precise
     * as numpy's float32 matmul */
    for (Py_ssize_t j0 = 0; j0 < k; j0 += ACC) {
        Py_ssize_t w = k - j0 < ACC ? k - j0 : ACC;
        if (w == ACC) {
            v4f acc[ACC / 4];
            for (int q = 0; q < ACC / 4; q++) acc[q] = (v4f){0, 0, 0, 0};
            for (Py_ssize_t i = 0; i < n; i++) {
                const float *row = pm + out_idx[i] * k + j0;
                if (i + PREFETCH < n) { /* rows are scattered over MiBs: ask for them early */
                    const char *ahead = (const char *)(pm + out_idx[i + PREFETCH] * k + j0);
                    __builtin_prefetch(ahead);
                    __builtin_prefetch(ahead + 64);
                }
                float s = out_val[i];
                v4f v = {s, s, s, s};
                for (int q = 0; q < ACC / 4; q++) {
                    v4f r;
                    memcpy(&r, row + 4 * q, sizeof r); /* an unaligned load */
                    acc[q] += v * r;
                }
            }
            for (int q = 0; q < ACC / 4; q++)
                for (int j = 0; j < 4; j++) z[j0 + 4 * q + j] = acc[q][j];
        } else {
            float acc[ACC] = {0};
            for (Py_ssize_t i = 0; i < n; i++) {
                const float *row = pm + out_idx[i] * k + j0;
                float v = out_val[i];
                for (Py_ssize_t j = 0; j < w; j++) acc[j] += v * row[j];
            }
            for (Py_ssize_t j = 0; j < w; j++) z[j0 + j] = acc[j];
        }
    }
    for (Py_ssize_t i = 0; i < n_struct; i++) {
        double v = (float)st[i];
        const float *row = pm + (n_hash + i) * k;
        for (Py_ssize_t j = 0; j < k; j++) z[j] += v * row[j];
    }
}

/* A new list (or tuple) of the n doubles at v. */
static PyObject *floats(const double *v, Py_ssize_t n, int as_list) {
    PyObject *out = as_list ? PyList_New(n) : PyTuple_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyFloat_FromDouble(v[i]);
        if (f == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (as_list)
            PyList_SET_ITEM(out, i, f);
        else
            PyTuple_SET_ITEM(out, i, f);
    }
    return out;
}

/* The list abilities @ z + biases (float64 (m, k) and (m,)). */
static PyObject *scores_of(const double *z, Py_ssize_t k, const Py_buffer *ab,
                           const Py_buffer *bs, Py_ssize_t m) {
    double *q = PyMem_Malloc((size_t)(m > 0 ? m : 1) * sizeof(double));
    if (q == NULL) return PyErr_NoMemory();
    const double *a = (const double *)ab->buf, *b = (const double *)bs->buf;
    for (Py_ssize_t p = 0; p < m; p++) {
        double acc = 0.0;
        for (Py_ssize_t j = 0; j < k; j++) acc += a[p * k + j] * z[j];
        q[p] = acc + b[p];
    }
    PyObject *scores = floats(q, m, 1);
    PyMem_Free(q);
    return scores;
}

#define MAX_MARKERS 64

/* The sum over `markers` (non-empty bytes) of each one's non-overlapping occurrences in `s`,
 * as sum(map(s.count, markers)), in one pass over `s`: a table of which markers start with
 * each byte, and per marker the first position a new match may start at (bytes.count takes
 * the leftmost match, then looks on after it). One memmem() per marker cost as much again
 * per call, and more than the whole pass when its code is not in the cache. */
static int count_all(const char *s, Py_ssize_t n, PyObject *markers, Py_ssize_t *total) {
    PyObject *fast = PySequence_Fast(markers, "markers must be a sequence of bytes");
    if (fast == NULL) return -1;
    Py_ssize_t nm = PySequence_Fast_GET_SIZE(fast);
    if (nm > MAX_MARKERS) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d markers", MAX_MARKERS);
        return -1;
    }
    const char *mk[MAX_MARKERS];
    Py_ssize_t len[MAX_MARKERS], next[MAX_MARKERS];
    uint64_t starts[256] = {0}; /* bit j: marker j starts with this byte */
    for (Py_ssize_t j = 0; j < nm; j++) {
        PyObject *m = PySequence_Fast_GET_ITEM(fast, j);
        if (!PyBytes_Check(m) || PyBytes_GET_SIZE(m) == 0) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "markers must be non-empty bytes");
            return -1;
        }
        mk[j] = PyBytes_AS_STRING(m);
        len[j] = PyBytes_GET_SIZE(m);
        next[j] = 0;
        starts[(unsigned char)mk[j][0]] |= (uint64_t)1 << j;
    }
    Py_ssize_t c = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t x = starts[(unsigned char)s[i]];
        while (x) {
            int j = __builtin_ctzll(x);
            x &= x - 1;
            if (i >= next[j] && len[j] <= n - i && memcmp(s + i, mk[j], (size_t)len[j]) == 0) {
                c++;
                next[j] = i + len[j];
            }
        }
    }
    Py_DECREF(fast); /* the marker bytes live on in `markers` */
    *total = c;
    return 0;
}

static double dmin(double a, double b) { return a < b ? a : b; }

#define N_STRUCT 16
#define SAMPLE_HALF 4096

/* lexical.py's structure features (STRUCT_NAMES) into v[16], with the same formulas as its
 * Python `_struct_values` (each the same IEEE operations, so the same doubles): the counts
 * behind them are those of the bytes methods (count, translate), the markers counted in
 * `sample`. `c` holds the conversation's len_text, len_last_user, n_user, n_assistant,
 * len_system, n_tools, n_tool_msgs, n_images. */
static int struct_values(const char *raw, Py_ssize_t n, const char *sample, Py_ssize_t ns,
                         PyObject *code_m, PyObject *math_m, const Py_ssize_t c[8],
                         double v[N_STRUCT]) {
    Py_ssize_t spaces = 0, newlines = 0, qmarks = 0, digits = 0, code, maths;
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = raw[i];
        spaces += ch == ' ';
        newlines += ch == '\n';
        qmarks += ch == '?';
    }
    Py_ssize_t head = n < 8192 ? n : 8192;
    for (Py_ssize_t i = 0; i < head; i++) digits += raw[i] >= '0' && raw[i] <= '9';
    if (count_all(sample, ns, code_m, &code) < 0 || count_all(sample, ns, math_m, &maths) < 0)
        return -1;
    double nn = (double)(n > 1 ? n : 1);
    double out[N_STRUCT] = {
        log1p((double)c[0]) / 10.0,
        log1p((double)(spaces + 1)) / 8.0,
        log1p((double)c[1]) / 10.0,
        dmin((double)c[2], 20.0) / 10.0,
        dmin((double)c[3], 20.0) / 10.0,
        c[4] > 0 ? 1.0 : 0.0,
        log1p((double)c[4]) / 10.0,
        dmin((double)c[5], 20.0) / 10.0,
        dmin((double)c[6], 20.0) / 10.0,
        dmin((double)c[7], 10.0) / 5.0,
        log1p((double)code) / 3.0,
        log1p((double)maths) / 3.0,
        (double)digits / (double)(head > 1 ? head : 1),
        (double)newlines / nn * 10.0,
        dmin((double)qmarks, 10.0) / 5.0,
        (double)(n - c[0]) / nn,
    };
    memcpy(v, out, sizeof out);
    return 0;
}

/* structure(raw, sample, code_markers, math_markers, len_text, len_last_user, n_user,
 *           n_assistant, len_system, n_tools, n_tool_msgs, n_images) -> 16 floats */
static PyObject *structure(PyObject *Py_UNUSED(self), PyObject *args) {
    const char *raw, *sample;
    Py_ssize_t n, ns, c[8];
    PyObject *code_m, *math_m;
    double v[N_STRUCT];
    if (!PyArg_ParseTuple(args, "y#y#OOnnnnnnnn", &raw, &n, &sample, &ns, &code_m, &math_m,
                          &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7]))
        return NULL;
    if (struct_values(raw, n, sample, ns, code_m, math_m, c, v) < 0) return NULL;
    return floats(v, N_STRUCT, 0);
}

static unsigned char *scratch = NULL; /* the collapsed text (route) */
static Py_ssize_t scratch_cap = 0;

/* route(raw, bits, code_markers, math_markers, len_text, len_last_user, n_user, n_assistant,
 *       len_system, n_tools, n_tool_msgs, n_images, projection, abilities, biases)
 *     -> (z: list of k floats, scores: list of m floats)
 *
 * The router's prompt vector and every profile's raw score in one call, the gateway's
 * whole routing arithmetic. `raw` is the lower-cased UTF-8 conversation; its whitespace
 * runs are collapsed to single spaces as b" ".join(raw.split()) does (ASCII whitespace,
 * none at either end) before hashing (hash_counts); the structure features are those of
 * structure(raw, sample, ...) with sample = raw, or its first and last 4 KiB when it is
 * longer than 8 KiB. z is the hashed blocks and the float32-cast structure values (the last
 * 16 rows) times the float32 (2^bits + 16, k) C-contiguous `projection` (`val @
 * projection[idx]` of lexical.py's transform); scores is `abilities @ z + biases` (float64
 * (m, k) and (m,), C-contiguous) of model.py's Router. */
static PyObject *route(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer buf, proj, ab, bs;
    int bits;
    Py_ssize_t c[8], k, m;
    PyObject *code_m, *math_m;
    if (!PyArg_ParseTuple(args, "y*iOOnnnnnnnny*y*y*", &buf, &bits, &code_m, &math_m, &c[0],
                          &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7], &proj, &ab, &bs))
        return NULL;
    PyObject *result = NULL;
    const char *raw = buf.buf;
    Py_ssize_t n = buf.len;
    double sv[N_STRUCT];
    if (check_shapes(bits, N_STRUCT, &proj, &ab, &bs, &k, &m) < 0) goto done;
    if (n + 2 * SAMPLE_HALF > scratch_cap) {
        Py_ssize_t cap2 = n + 2 * SAMPLE_HALF;
        unsigned char *p = realloc(scratch, (size_t)cap2);
        if (p == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        scratch = p;
        scratch_cap = cap2;
    }
    /* the marker sample, in the scratch buffer's tail half when it must be a copy */
    const char *sample = raw;
    Py_ssize_t ns = n;
    if (n > 2 * SAMPLE_HALF) {
        char *tail = (char *)scratch + n;
        memcpy(tail, raw, SAMPLE_HALF);
        memcpy(tail + SAMPLE_HALF, raw + n - SAMPLE_HALF, SAMPLE_HALF);
        sample = tail;
        ns = 2 * SAMPLE_HALF;
    }
    if (struct_values(raw, n, sample, ns, code_m, math_m, c, sv) < 0) goto done;
    /* b" ".join(raw.split()): bytes.split() splits on the ASCII whitespace of Py_ISSPACE */
    Py_ssize_t t = 0;
    for (Py_ssize_t i = 0; i < n;) {
        while (i < n && Py_ISSPACE(raw[i])) i++;
        if (i == n) break;
        if (t > 0) scratch[t++] = ' ';
        while (i < n && !Py_ISSPACE(raw[i])) scratch[t++] = (unsigned char)raw[i++];
    }
    Py_ssize_t nf = featurize(scratch, t, bits);
    if (nf < 0) goto done;
    double z[MAX_RANK]; /* k <= MAX_RANK: check_shapes */
    project_into(nf, bits, sv, N_STRUCT, (const float *)proj.buf, k, z);
    PyObject *z_list = floats(z, k, 1);
    PyObject *scores = z_list == NULL ? NULL : scores_of(z, k, &ab, &bs, m);
    result = scores == NULL ? NULL : PyTuple_Pack(2, z_list, scores);
    Py_XDECREF(z_list);
    Py_XDECREF(scores);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&proj);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&bs);
    return result;
}


static PyObject *key_role, *key_content, *key_tool_calls; /* interned dict keys */

/* conversation(messages, tools) -> (raw, (len_text, len_last_user, n_user, n_assistant,
 *                                    len_system, n_tools, n_tool_msgs, n_images)) | None
 *
 * messages.py's Conversation and lexical.py's _text for the common request, in one pass:
 * `messages` a list of dicts whose "role" is a str and whose "content" is an ASCII str or
 * None or missing, none with "tool_calls", and no `tools`. `raw` is the lower-cased text
 * (the turns joined by newlines), not yet cut to _MAX_BYTES; the counts are those of
 * Conversation (n_tools and n_images are 0). Anything else (content parts, non-ASCII text,
 * tool calls or definitions) returns None: the Python path handles it. */
static PyObject *conversation(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *messages, *tools;
    if (!PyArg_ParseTuple(args, "OO", &messages, &tools)) return NULL;
    if (!PyList_CheckExact(messages)) Py_RETURN_NONE;
    if (tools != Py_None) {
        int t = PyObject_IsTrue(tools);
        if (t < 0) return NULL;
        if (t) Py_RETURN_NONE;
    }
    Py_ssize_t nm = PyList_GET_SIZE(messages), total = 0;
    for (Py_ssize_t i = 0; i < nm; i++) { /* check everything and size the text first */
        PyObject *msg = PyList_GET_ITEM(messages, i);
        if (!PyDict_CheckExact(msg)) Py_RETURN_NONE;
        PyObject *role = PyDict_GetItemWithError(msg, key_role);
        PyObject *content = PyDict_GetItemWithError(msg, key_content);
        PyObject *calls = PyDict_GetItemWithError(msg, key_tool_calls);
        if (PyErr_Occurred()) return NULL;
        if (role != NULL && !PyUnicode_CheckExact(role)) Py_RETURN_NONE;
        if (calls != NULL) {
            int t = PyObject_IsTrue(calls);
            if (t < 0) return NULL;
            if (t) Py_RETURN_NONE;
        }
        if (content != NULL && content != Py_None) {
            if (!PyUnicode_CheckExact(content) || !PyUnicode_IS_ASCII(content)) Py_RETURN_NONE;
            total += PyUnicode_GET_LENGTH(content);
        }
        total += i > 0; /* the newline before each turn but the first */
    }
    PyObject *raw = PyBytes_FromStringAndSize(NULL, total);
    if (raw == NULL) return NULL;
    char *out = PyBytes_AS_STRING(raw);
    Py_ssize_t at = 0, last_user = 0, n_user = 0, n_assistant = 0, n_other = 0;
    Py_ssize_t len_system = 0, n_system = 0;
    for (Py_ssize_t i = 0; i < nm; i++) {
        PyObject *msg = PyList_GET_ITEM(messages, i);
        PyObject *role = PyDict_GetItemWithError(msg, key_role);
        PyObject *content = PyDict_GetItemWithError(msg, key_content);
        if (PyErr_Occurred()) {
            Py_DECREF(raw);
            return NULL;
        }
        Py_ssize_t len = 0;
        if (i > 0) out[at++] = '\n';
        if (content != NULL && content != Py_None) {
            const char *src = (const char *)PyUnicode_1BYTE_DATA(content);
            len = PyUnicode_GET_LENGTH(content);
            for (Py_ssize_t j = 0; j < len; j++) {
                char c = src[j];
                out[at++] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
            }
        }
        /* role: str(msg.get("role", "user")) */
        if (role == NULL || PyUnicode_CompareWithASCIIString(role, "user") == 0) {
            n_user++;
            last_user = len;
        } else if (PyUnicode_CompareWithASCIIString(role, "system") == 0 ||
                   PyUnicode_CompareWithASCIIString(role, "developer") == 0) {
            len_system += len + (n_system > 0);
            n_system++;
        } else if (PyUnicode_CompareWithASCIIString(role, "assistant") == 0) {
            n_assistant++;
        } else {
            n_other++;
        }
    }
    return Py_BuildValue("(N(nnnnnnnn))", raw, total, last_user, n_user, n_assistant,
                         len_system, (Py_ssize_t)0, n_other, (Py_ssize_t)0);
}

static PyMethodDef methods[] = {
    {"hash_counts", hash_counts, METH_VARARGS,
     "hash_counts(text, bits) -> (intp indices, float32 values) of the hashed n-gram blocks"},
    {"structure", structure, METH_VARARGS,
     "structure(raw, sample, code_markers, math_markers, <8 conversation counts>) -> 16 floats"},
    {"route", route, METH_VARARGS,
     "route(raw, bits, code_markers, math_markers, <8 conversation counts>, projection, "
     "abilities, biases) -> (z list, raw scores): the routing arithmetic in one call"},
    {"conversation", conversation, METH_VARARGS,
     "conversation(messages, tools) -> (raw, 8 counts) of a plain ASCII conversation, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_lexical", "Native hashing for the lexical featurizer.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lexical(void) {
    for (int c = 0; c < 256; c++) log1p_small[c] = log1pf((float)c);
    key_role = PyUnicode_InternFromString("role");
    key_content = PyUnicode_InternFromString("content");
    key_tool_calls = PyUnicode_InternFromString("tool_calls");
    if (key_role == NULL || key_content == NULL || key_tool_calls == NULL) return NULL;
    return PyModule_Create(&module);
}
