/*
 * depositwatch.chains._btcscan: the compiled fast path of btc_scan.scan_block.
 *
 * scan(buf, scripts, outpoints, more_scripts, follow, verify_merkle) reads a serialized block exactly
 * as btc_scan's pure-Python scan does: the header, canonical CompactSize counts and lengths (at most
 * MAX_SIZE, long counts no larger than what is left can hold), inputs, outputs, the segwit marker,
 * flag and witness stacks, no trailing bytes, the txid merkle root (Core's ComputeMerkleRoot) and the
 * mutation check. It looks every output script up in `scripts` (then `more_scripts`), every input's
 * 36-byte outpoint in `outpoints` (or in its own set, once an output of the block that was a hit,
 * and with `follow` in it, is added), and returns the raw facts:
 *
 *     (tx_count, [(tx_index, txid, vout, value, script)], [(tx_index, txid, vin, prev_txid, prev_vout)])
 *
 * with txids in internal byte order. It never reports a decoding error of its own: on anything
 * irregular it returns None and the caller reads the block again in Python, which raises the exact
 * error. Exceptions raised by the containers' lookups propagate.
 *
 * Every read is bounds-checked against the buffer length with subtractions (never `offset + length`
 * compared after the addition could wrap), and every offset stays at most the buffer length.
 */

#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define MAX_SIZE 0x02000000u
#define MIN_TX_SIZE 51 /* version, one input with an empty script, no outputs, locktime */

/* ------------------------------------------------------------------------------------------ */
/* Reading */

/* The CompactSize at `at`: 0 with *value and *next set, or -1 when it is truncated, non-canonical
 * or over MAX_SIZE. Leaves *next <= n. */
static int
read_compact(const unsigned char *p, size_t n, size_t at, size_t *value, size_t *next)
{
    if (at >= n) {
        return -1;
    }
    unsigned first = p[at];
    if (first < 0xFD) {
        *value = first;
        *next = at + 1;
        return 0;
    }
    size_t width = first == 0xFD ? 2 : first == 0xFE ? 4 : 8;
    if (width > n - at - 1) {
        return -1;
    }
    uint64_t v = 0;
    for (size_t k = 0; k < width; k++) {
        v |= (uint64_t)p[at + 1 + k] << (8 * k);
    }
    uint64_t least = width == 2 ? 0xFD : width == 4 ? 0x10000 : UINT64_C(0x100000000);
    if (v < least || v > MAX_SIZE) {
        return -1;
    }
    *value = (size_t)v;
    *next = at + 1 + width;
    return 0;
}

/* A count of items of at least `min_item` bytes each: in its long form it must fit in what is left
 * (as btc_wire's _read_count; the one-byte form is not checked there, so not here either). */
static int
read_count(const unsigned char *p, size_t n, size_t at, size_t min_item, size_t *value, size_t *next)
{
    if (read_compact(p, n, at, value, next) < 0) {
        return -1;
    }
    if (p[at] >= 0xFD && *value > (n - *next) / min_item) {
        /* value * min_item > n - next, without the product */
        return -1;
    }
    return 0;
}

static inline uint32_t
le32(const unsigned char *q)
{
    return (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
}

static inline int64_t
le64(const unsigned char *q)
{
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) {
        v = v << 8 | q[k];
    }
    return (int64_t)v;
}

/* ------------------------------------------------------------------------------------------ */
/* Hashing */

static void
sha256d(const unsigned char *data, size_t len, unsigned char out[32])
{
    SHA256_CTX c;
    unsigned char d[32];
    SHA256_Init(&c);
    SHA256_Update(&c, data, len);
    SHA256_Final(d, &c);
    SHA256_Init(&c);
    SHA256_Update(&c, d, 32);
    SHA256_Final(out, &c);
}

/* Core's ComputeMerkleRoot over `len` >= 1 hashes in `h`, which has room for len + 1: overwrites
 * them, leaves the root in h[0..32) and returns whether the tree is mutated. */
static int
merkle(unsigned char *h, size_t len)
{
    int mutated = 0;
    while (len > 1) {
        if (!mutated) {
            for (size_t pos = 0; pos + 1 < len; pos += 2) {
                if (memcmp(h + 32 * pos, h + 32 * (pos + 1), 32) == 0) {
                    mutated = 1;
                    break;
                }
            }
        }
        if (len & 1) {
            memcpy(h + 32 * len, h + 32 * (len - 1), 32);
            len++;
        }
        /* in place: node j is written after its inputs 2j and 2j + 1 are read, and no later node
         * reads below 64 (j + 1) */
        for (size_t j = 0; j < len / 2; j++) {
            sha256d(h + 64 * j, 64, h + 32 * j);
        }
        len /= 2;
    }
    return mutated;
}

/* ------------------------------------------------------------------------------------------ */
/* Containers */

enum { KIND_OTHER, KIND_SET, KIND_DICT };

typedef struct {
    PyObject *obj; /* borrowed, or the scan's own set */
    int kind;
} Lookup;

static void
lookup_init(Lookup *l, PyObject *obj)
{
    l->obj = obj;
    /* exact types only: a subclass may define its own __contains__ */
    l->kind = PyAnySet_CheckExact(obj) ? KIND_SET : PyDict_CheckExact(obj) ? KIND_DICT : KIND_OTHER;
}

static inline int
lookup(const Lookup *l, PyObject *key)
{
    switch (l->kind) {
    case KIND_SET:
        return PySet_Contains(l->obj, key);
    case KIND_DICT:
        return PyDict_Contains(l->obj, key);
    default:
        return PySequence_Contains(l->obj, key);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Hits */

typedef struct {
    size_t tx, vout, at, script, len; /* `at`: the output's value */
} OutHit;

typedef struct {
    size_t tx, vin, at; /* `at`: the outpoint */
} SpendHit;

typedef struct {
    OutHit *outs;
    size_t n_outs, cap_outs;
    SpendHit *spends;
    size_t n_spends, cap_spends;
} Hits;

static int
grow(void **items, size_t *cap, size_t size)
{
    size_t want = *cap ? *cap * 2 : 16;
    if (want > PY_SSIZE_T_MAX / size) {
        PyErr_NoMemory();
        return -1;
    }
    void *bigger = PyMem_Realloc(*items, want * size);
    if (bigger == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *items = bigger;
    *cap = want;
    return 0;
}

static int
add_out(Hits *hits, size_t tx, size_t vout, size_t at, size_t script, size_t len)
{
    if (hits->n_outs == hits->cap_outs && grow((void **)&hits->outs, &hits->cap_outs, sizeof(OutHit)) < 0) {
        return -1;
    }
    hits->outs[hits->n_outs++] = (OutHit){tx, vout, at, script, len};
    return 0;
}

static int
add_spend(Hits *hits, size_t tx, size_t vin, size_t at)
{
    if (hits->n_spends == hits->cap_spends
        && grow((void **)&hits->spends, &hits->cap_spends, sizeof(SpendHit)) < 0) {
        return -1;
    }
    hits->spends[hits->n_spends++] = (SpendHit){tx, vin, at};
    return 0;
}

static PyObject *
build_result(const unsigned char *p, size_t count, const unsigned char *txids, const Hits *hits)
{
    PyObject *outs = PyList_New((Py_ssize_t)hits->n_outs);
    PyObject *spends = PyList_New((Py_ssize_t)hits->n_spends);
    if (outs == NULL || spends == NULL) {
        goto fail;
    }
    for (size_t k = 0; k < hits->n_outs; k++) {
        const OutHit *h = &hits->outs[k];
        PyObject *item = Py_BuildValue("(ny#nLy#)", (Py_ssize_t)h->tx, (const char *)txids + 32 * h->tx,
                                       (Py_ssize_t)32, (Py_ssize_t)h->vout, (long long)le64(p + h->at),
                                       (const char *)p + h->script, (Py_ssize_t)h->len);
        if (item == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(outs, (Py_ssize_t)k, item);
    }
    for (size_t k = 0; k < hits->n_spends; k++) {
        const SpendHit *h = &hits->spends[k];
        PyObject *item = Py_BuildValue("(ny#ny#k)", (Py_ssize_t)h->tx, (const char *)txids + 32 * h->tx,
                                       (Py_ssize_t)32, (Py_ssize_t)h->vin, (const char *)p + h->at,
                                       (Py_ssize_t)32, (unsigned long)le32(p + h->at + 32));
        if (item == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(spends, (Py_ssize_t)k, item);
    }
    return Py_BuildValue("(nNN)", (Py_ssize_t)count, outs, spends);
fail:
    Py_XDECREF(outs);
    Py_XDECREF(spends);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The scan */

/* What a step of the scan ends with: go on, give up quietly (None), or a Python exception. */
#define IRREGULAR 1
#define FAILED (-1)

/* The outputs of transaction `tx` that were hits from `first` on and pay a script in `follow` (all
 * of them without it) become outpoints to look for: added to `own` (made from `outpoints` at the
 * first one), which `spent` then looks in. */
static int
follow_hits(const unsigned char *p, const unsigned char *txid, const Hits *hits, size_t first,
            const Lookup *follow, PyObject *outpoints, PyObject **own, Lookup *spent, int *looking,
            unsigned char heads[256])
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) {
        return FAILED;
    }
    for (size_t k = first; k < hits->n_outs; k++) {
        const OutHit *h = &hits->outs[k];
        if (follow != NULL) {
            PyObject *script = PyBytes_FromStringAndSize((const char *)p + h->script, (Py_ssize_t)h->len);
            if (script == NULL) {
                goto fail;
            }
            int found = lookup(follow, script);
            Py_DECREF(script);
            if (found < 0) {
                goto fail;
            }
            if (!found) {
                continue;
            }
        }
        unsigned char key[36];
        memcpy(key, txid, 32);
        uint32_t vout = (uint32_t)h->vout;
        for (int b = 0; b < 4; b++) {
            key[32 + b] = (unsigned char)(vout >> (8 * b));
        }
        PyObject *item = PyBytes_FromStringAndSize((const char *)key, 36);
        if (item == NULL) {
            goto fail;
        }
        int appended = PyList_Append(fresh, item);
        Py_DECREF(item);
        if (appended < 0) {
            goto fail;
        }
    }
    if (PyList_GET_SIZE(fresh) > 0) {
        if (*own == NULL) {
            *own = PySet_New(outpoints);
            if (*own == NULL) {
                goto fail;
            }
            lookup_init(spent, *own);
            *looking = 1;
        }
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(fresh); k++) {
            if (PySet_Add(*own, PyList_GET_ITEM(fresh, k)) < 0) {
                goto fail;
            }
        }
        heads[txid[0]] = 1;
    }
    Py_DECREF(fresh);
    return 0;
fail:
    Py_DECREF(fresh);
    return FAILED;
}

/* Transaction `tx` at *off: its hits added, its txid written, *off moved past it. */
static int
scan_tx(const unsigned char *p, size_t n, size_t *off_io, size_t tx, const Lookup *scripts, const Lookup *more,
        const Lookup *spent, int looking, const unsigned char heads[256], Hits *hits, unsigned char txid[32])
{
    size_t start = *off_io, off, body, nin, nout, wit_start = 0;
    if (n - start <= 4) { /* the version, and at least the byte after it */
        return IRREGULAR;
    }
    body = start + 4;
    int segwit = p[body] == 0;
    if (segwit) {
        if (n - body <= 1 || p[body + 1] != 1) {
            return IRREGULAR;
        }
        body += 2;
    }
    if (read_count(p, n, body, 41, &nin, &off) < 0) {
        return IRREGULAR;
    }
    for (size_t vin = 0; vin < nin; vin++) {
        size_t len, script;
        if (n - off <= 36) { /* the outpoint and the script length's first byte */
            return IRREGULAR;
        }
        if (looking && heads[p[off]]) {
            PyObject *key = PyBytes_FromStringAndSize((const char *)p + off, 36);
            if (key == NULL) {
                return FAILED;
            }
            int found = lookup(spent, key);
            Py_DECREF(key);
            if (found < 0 || (found && add_spend(hits, tx, vin, off) < 0)) {
                return FAILED;
            }
        }
        if (read_compact(p, n, off + 36, &len, &script) < 0 || len > n - script || n - script - len < 4) {
            return IRREGULAR;
        }
        off = script + len + 4; /* past the script and the sequence */
    }
    if (read_count(p, n, off, 9, &nout, &off) < 0) {
        return IRREGULAR;
    }
    for (size_t vout = 0; vout < nout; vout++) {
        size_t len, script;
        if (n - off <= 8 || read_compact(p, n, off + 8, &len, &script) < 0 || len > n - script) {
            return IRREGULAR;
        }
        PyObject *key = PyBytes_FromStringAndSize((const char *)p + script, (Py_ssize_t)len);
        if (key == NULL) {
            return FAILED;
        }
        int found = lookup(scripts, key);
        if (found == 0 && more != NULL) {
            found = lookup(more, key);
        }
        Py_DECREF(key);
        if (found < 0 || (found && add_out(hits, tx, vout, off, script, len) < 0)) {
            return FAILED;
        }
        off = script + len;
    }
    if (segwit) {
        int any_witness = 0;
        wit_start = off;
        for (size_t vin = 0; vin < nin; vin++) {
            size_t items;
            if (read_count(p, n, off, 1, &items, &off) < 0) {
                return IRREGULAR;
            }
            any_witness |= items != 0;
            for (size_t k = 0; k < items; k++) {
                size_t len, item;
                if (read_compact(p, n, off, &len, &item) < 0 || len > n - item) {
                    return IRREGULAR;
                }
                off = item + len;
            }
        }
        if (!any_witness) { /* superfluous witness record */
            return IRREGULAR;
        }
    }
    if (n - off < 4) { /* the locktime */
        return IRREGULAR;
    }
    if (segwit) { /* the txid leaves the marker, the flag and the witness stacks out */
        SHA256_CTX c;
        unsigned char d[32];
        SHA256_Init(&c);
        SHA256_Update(&c, p + start, 4);
        SHA256_Update(&c, p + body, wit_start - body);
        SHA256_Update(&c, p + off, 4);
        SHA256_Final(d, &c);
        SHA256_Init(&c);
        SHA256_Update(&c, d, 32);
        SHA256_Final(txid, &c);
    }
    else {
        sha256d(p + start, off + 4 - start, txid);
    }
    *off_io = off + 4;
    return 0;
}

static PyObject *
scan(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "scan() takes 6 positional arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *raw = args[0], *outpoints = args[2];
    if (!PyBytes_CheckExact(raw)) {
        PyErr_SetString(PyExc_TypeError, "scan() needs the block as bytes");
        return NULL;
    }
    int verify_merkle = PyObject_IsTrue(args[5]);
    if (verify_merkle < 0) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    size_t n = (size_t)PyBytes_GET_SIZE(raw), count, off;
    if (n < 81 || read_count(p, n, 80, MIN_TX_SIZE, &count, &off) < 0 || count == 0) {
        Py_RETURN_NONE;
    }

    Lookup scripts, more, follow, spent;
    lookup_init(&scripts, args[1]);
    if (args[3] != Py_None) {
        lookup_init(&more, args[3]);
    }
    if (args[4] != Py_None) {
        lookup_init(&follow, args[4]);
    }
    lookup_init(&spent, outpoints);
    int looking = PyObject_IsTrue(outpoints);
    if (looking < 0) {
        return NULL;
    }
    /* the first bytes of the outpoints: a cheap test before an input's key is made */
    unsigned char heads[256] = {0};
    PyObject *it = PyObject_GetIter(outpoints), *key;
    if (it == NULL) {
        return NULL;
    }
    int plain = 1;
    while (plain && (key = PyIter_Next(it)) != NULL) {
        if (!PyBytes_CheckExact(key)) {
            plain = 0; /* the Python path knows what to make of it */
        }
        else if (PyBytes_GET_SIZE(key) > 0) {
            heads[(unsigned char)PyBytes_AS_STRING(key)[0]] = 1;
        }
        Py_DECREF(key);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!plain) {
        Py_RETURN_NONE;
    }

    PyObject *result = NULL, *own = NULL;
    Hits hits = {0};
    /* the txids, then room for the merkle tree (count + 1 hashes); count <= n / 51 (a long count was
     * checked against what is left), so this cannot overflow */
    unsigned char *txids = PyMem_Malloc((2 * count + 1) * 32);
    if (txids == NULL) {
        return PyErr_NoMemory();
    }
    for (size_t tx = 0; tx < count; tx++) {
        size_t first = hits.n_outs;
        unsigned char *txid = txids + 32 * tx;
        int step = scan_tx(p, n, &off, tx, &scripts, args[3] != Py_None ? &more : NULL, &spent, looking, heads,
                           &hits, txid);
        if (step == 0 && hits.n_outs > first) {
            step = follow_hits(p, txid, &hits, first, args[4] != Py_None ? &follow : NULL, outpoints, &own, &spent,
                               &looking, heads);
        }
        if (step == FAILED) {
            goto done;
        }
        if (step == IRREGULAR) {
            goto irregular;
        }
    }
    if (off != n) { /* trailing bytes */
        goto irregular;
    }
    if (verify_merkle) {
        unsigned char *tree = txids + 32 * count; /* room for count + 1: the txids are kept for the hits */
        memcpy(tree, txids, 32 * count);
        int mutated = merkle(tree, count);
        if (memcmp(tree, p + 36, 32) != 0 || mutated) {
            goto irregular;
        }
    }
    result = build_result(p, count, txids, &hits);
    goto done;
irregular:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(txids);
    PyMem_Free(hits.outs);
    PyMem_Free(hits.spends);
    Py_XDECREF(own);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, scripts, outpoints, more_scripts, follow, verify_merkle): the facts of btc_scan.scan_block, "
     "or None for anything irregular."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "depositwatch.chains._btcscan",
    .m_doc = "The compiled fast path of btc_scan.scan_block.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__btcscan(void)
{
    return PyModule_Create(&module);
}
