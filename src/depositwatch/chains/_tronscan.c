/*
 * depositwatch.chains._tronscan: the compiled fast path of tron_wire's fixed-offset contract reading.
 *
 * fields(raw) reads `Transaction.raw` bytes in the one layout java-tron writes, as
 * tron_wire._canonical_fields_py does, and returns the same `SignedFields` tuple
 *
 *     (type, owner, to, contract, amount, asset, data)
 *
 * or None for any other layout; the caller then reads the bytes through the general grammar, which
 * decides (and raises the exact error). It declines a little more than the Python reading (varints
 * of 10 bytes, lengths of more than two bytes): declining is always safe.
 *
 * transaction(raw_hex, signature_hex, tail) does what a usual transaction needs in one call: the hex
 * of the raw data and of one 65-byte signature (ASCII hex digits only, no spaces), the txID as
 * lowercase hex (sha256 of the raw data), the trie leaf (sha256 of the whole `Transaction`: raw data
 * = 1, the signature = 2, then `tail`, the encoded result field) and the fields above:
 *
 *     (txid_hex, leaf, fields)
 *
 * or None for anything else.
 *
 * Every read is bounds-checked against the end of the message it is in with subtractions (never
 * `offset + length` compared after the addition could wrap), and every offset stays at most that end.
 */

#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

/* A varint of at most 9 bytes (63 bits, always a valid int64) at *at, below n: 0, or -1. */
static int
read_varint9(const unsigned char *p, size_t n, size_t *at, uint64_t *value)
{
    uint64_t v = 0;
    for (int k = 0; k < 9; k++) {
        if (*at >= n) {
            return -1;
        }
        unsigned b = p[(*at)++];
        v |= (uint64_t)(b & 0x7F) << (7 * k);
        if (!(b & 0x80)) {
            *value = v;
            return 0;
        }
    }
    return -1;
}

/* A length of one or two bytes (below 16384) at *at, below n: 0, or -1. */
static int
read_len2(const unsigned char *p, size_t n, size_t *at, size_t *value)
{
    if (*at >= n) {
        return -1;
    }
    unsigned b = p[(*at)++];
    if (b < 0x80) {
        *value = b;
        return 0;
    }
    if (*at >= n) {
        return -1;
    }
    unsigned c = p[(*at)++];
    if (c >= 0x80) {
        return -1;
    }
    *value = (b & 0x7F) | ((size_t)c << 7);
    return 0;
}

typedef struct {
    unsigned kind;
    size_t owner, other; /* 21 bytes each */
    int has_asset;
    size_t asset, asset_len;
    uint64_t amount;
    size_t data, data_len;
} Parsed;

/* java-tron's layout: ref_block_bytes (2), ref_block_hash (8), expiration, the contract, then only
 * timestamp and fee_limit; one contract of type 1, 2 or 31 whose Any parameter fills it, its fields in
 * number order with 21-byte accounts. 0, or -1 for anything else. */
static int
parse(const unsigned char *p, size_t n, Parsed *out)
{
    size_t at, len, end, t;
    uint64_t v;
    if (n < 15 || p[0] != 0x0A || p[1] != 0x02 || p[4] != 0x22 || p[5] != 0x08 || p[14] != 0x40) {
        return -1;
    }
    at = 15;
    if (read_varint9(p, n, &at, &v) || at >= n || p[at++] != 0x5A || read_len2(p, n, &at, &len)) {
        return -1;
    }
    if (len > n - at) {
        return -1;
    }
    end = at + len;
    t = end; /* after the contract: timestamp = 14, fee_limit = 18, nothing else */
    if (t < n && p[t] == 0x70) {
        t++;
        if (read_varint9(p, n, &t, &v)) {
            return -1;
        }
    }
    if (t < n && p[t] == 0x90) {
        if (n - t < 2 || p[t + 1] != 0x01) {
            return -1;
        }
        t += 2;
        if (read_varint9(p, n, &t, &v)) {
            return -1;
        }
    }
    if (t != n) {
        return -1;
    }
    /* Contract: type = 1, parameter = 2 filling the rest */
    if (end - at < 3 || p[at] != 0x08 || p[at + 2] != 0x12) {
        return -1;
    }
    out->kind = p[at + 1];
    if (out->kind != 1 && out->kind != 2 && out->kind != 31) {
        return -1;
    }
    at += 3;
    if (read_len2(p, end, &at, &len) || len != end - at) {
        return -1;
    }
    /* google.protobuf.Any: type_url = 1 (not read), value = 2 filling the rest */
    if (end - at < 2 || p[at] != 0x0A || p[at + 1] >= 0x80) {
        return -1;
    }
    len = p[at + 1];
    at += 2;
    if (len > end - at) {
        return -1;
    }
    at += len;
    if (at >= end || p[at] != 0x12) {
        return -1;
    }
    at++;
    if (read_len2(p, end, &at, &len) || len != end - at) {
        return -1;
    }
    unsigned first = 0x0A, second = 0x12, amount_key = 0x18;
    out->has_asset = 0;
    if (out->kind == 2) { /* asset_name = 1 comes before the accounts */
        if (end - at < 2 || p[at] != 0x0A || p[at + 1] >= 0x80) {
            return -1;
        }
        len = p[at + 1];
        at += 2;
        if (len > end - at) {
            return -1;
        }
        out->has_asset = 1;
        out->asset = at;
        out->asset_len = len;
        at += len;
        first = 0x12;
        second = 0x1A;
        amount_key = 0x20;
    }
    if (end - at < 46 || p[at] != first || p[at + 1] != 0x15 || p[at + 23] != second || p[at + 24] != 0x15) {
        return -1;
    }
    out->owner = at + 2;
    out->other = at + 25;
    at += 46;
    out->amount = 0;
    if (at < end && p[at] == amount_key) {
        at++;
        if (read_varint9(p, end, &at, &out->amount)) {
            return -1;
        }
    }
    out->data = at;
    out->data_len = 0;
    if (out->kind == 31 && at < end) {
        if (p[at] != 0x22) {
            return -1;
        }
        at++;
        if (read_len2(p, end, &at, &len) || len > end - at) {
            return -1;
        }
        out->data = at;
        out->data_len = len;
        at += len;
    }
    return at == end ? 0 : -1;
}

static PyObject *
bytes_at(const unsigned char *p, size_t at, size_t len)
{
    return PyBytes_FromStringAndSize((const char *)p + at, (Py_ssize_t)len);
}

/* The SignedFields tuple of a parsed contract, or NULL with an exception set. */
static PyObject *
fields_tuple(const unsigned char *p, const Parsed *f)
{
    PyObject *items[7];
    int trigger = f->kind == 31;
    items[0] = PyLong_FromUnsignedLong(f->kind);
    items[1] = bytes_at(p, f->owner, 21);
    if (trigger) {
        items[2] = Py_NewRef(Py_None);
        items[3] = bytes_at(p, f->other, 21);
    }
    else {
        items[2] = bytes_at(p, f->other, 21);
        items[3] = Py_NewRef(Py_None);
    }
    items[4] = PyLong_FromUnsignedLongLong(f->amount);
    items[5] = f->has_asset ? bytes_at(p, f->asset, f->asset_len) : Py_NewRef(Py_None);
    items[6] = bytes_at(p, f->data, f->data_len);
    PyObject *tuple = PyTuple_New(7);
    int failed = tuple == NULL;
    for (int k = 0; k < 7; k++) {
        if (items[k] == NULL) {
            failed = 1;
        }
    }
    if (failed) {
        for (int k = 0; k < 7; k++) {
            Py_XDECREF(items[k]);
        }
        Py_XDECREF(tuple);
        return NULL;
    }
    for (int k = 0; k < 7; k++) {
        PyTuple_SET_ITEM(tuple, k, items[k]);
    }
    return tuple;
}

static PyObject *
fields(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "fields() takes bytes");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(arg);
    Parsed f;
    if (parse(p, (size_t)PyBytes_GET_SIZE(arg), &f)) {
        Py_RETURN_NONE;
    }
    return fields_tuple(p, &f);
}

static int
hex_value(unsigned c)
{
    if (c >= '0' && c <= '9') {
        return (int)(c - '0');
    }
    c |= 0x20;
    if (c >= 'a' && c <= 'f') {
        return (int)(c - 'a' + 10);
    }
    return -1;
}

/* The bytes of an ASCII hex string of hex digits only into out (len / 2 bytes): 0, or -1. */
static int
unhex(PyObject *text, unsigned char *out, size_t *size, size_t capacity)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        return -1;
    }
    size_t len = (size_t)PyUnicode_GET_LENGTH(text);
    if (len % 2 || len / 2 > capacity) {
        return -1;
    }
    const unsigned char *h = PyUnicode_1BYTE_DATA(text);
    for (size_t k = 0; k < len / 2; k++) {
        int high = hex_value(h[2 * k]), low = hex_value(h[2 * k + 1]);
        if (high < 0 || low < 0) {
            return -1;
        }
        out[k] = (unsigned char)(high << 4 | low);
    }
    *size = len / 2;
    return 0;
}

static PyObject *
transaction(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "transaction(raw_hex, signature_hex, tail: bytes)");
        return NULL;
    }
    PyObject *raw_hex = args[0];
    if (!PyUnicode_Check(raw_hex) || PyUnicode_GET_LENGTH(raw_hex) < 2 || !PyUnicode_Check(args[1])) {
        Py_RETURN_NONE;
    }
    size_t capacity = (size_t)PyUnicode_GET_LENGTH(raw_hex) / 2, n, signature_size;
    unsigned char signature[65];
    unsigned char *raw = PyMem_Malloc(capacity);
    if (raw == NULL) {
        return PyErr_NoMemory();
    }
    Parsed f;
    if (unhex(raw_hex, raw, &n, capacity) || unhex(args[1], signature, &signature_size, sizeof signature) ||
        signature_size != sizeof signature || parse(raw, n, &f)) {
        PyMem_Free(raw);
        Py_RETURN_NONE;
    }
    unsigned char digest[32], head[11];
    size_t head_size = 1;
    head[0] = 0x0A; /* Transaction.raw_data = 1 */
    for (uint64_t v = n;; v >>= 7) {
        head[head_size++] = (unsigned char)(v & 0x7F) | (v >= 0x80 ? 0x80 : 0);
        if (v < 0x80) {
            break;
        }
    }
    static const unsigned char signature_key[2] = {0x12, 0x41}; /* Transaction.signature = 2, 65 bytes */
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, head, head_size);
    SHA256_Update(&c, raw, n);
    SHA256_Update(&c, signature_key, 2);
    SHA256_Update(&c, signature, sizeof signature);
    SHA256_Update(&c, PyBytes_AS_STRING(args[2]), (size_t)PyBytes_GET_SIZE(args[2]));
    SHA256_Final(digest, &c);
    PyObject *leaf = PyBytes_FromStringAndSize((const char *)digest, 32);
    SHA256(raw, n, digest);
    PyObject *txid = PyUnicode_New(64, 127);
    if (txid != NULL) {
        static const char digits[] = "0123456789abcdef";
        Py_UCS1 *out = PyUnicode_1BYTE_DATA(txid);
        for (int k = 0; k < 32; k++) {
            out[2 * k] = (Py_UCS1)digits[digest[k] >> 4];
            out[2 * k + 1] = (Py_UCS1)digits[digest[k] & 15];
        }
    }
    PyObject *tuple = fields_tuple(raw, &f);
    PyMem_Free(raw);
    if (leaf == NULL || txid == NULL || tuple == NULL) {
        Py_XDECREF(leaf);
        Py_XDECREF(txid);
        Py_XDECREF(tuple);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(3, txid, leaf, tuple);
    Py_DECREF(leaf);
    Py_DECREF(txid);
    Py_DECREF(tuple);
    return result;
}

static PyMethodDef methods[] = {
    {"fields", (PyCFunction)fields, METH_O,
     "fields(raw): the SignedFields of raw data in java-tron's layout, or None for any other layout."},
    {"transaction", (PyCFunction)(void (*)(void))transaction, METH_FASTCALL,
     "transaction(raw_hex, signature_hex, tail): (txid_hex, leaf, fields) of a usual transaction, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "depositwatch.chains._tronscan",
    .m_doc = "The compiled fast path of tron_wire's fixed-offset contract reading.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__tronscan(void)
{
    return PyModule_Create(&module);
}
