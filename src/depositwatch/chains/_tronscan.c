/*
 * depositwatch.chains._tronscan: the compiled fast paths of the TRON decode: tron_wire's fixed-offset
 * contract reading, and the checks of a block's usual transactions and infos.
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
 * The block decoder's checks of the node's usual JSON (tron_txs, tron_decode), each described where it
 * is defined below: usual() and transactions() read transactions (the JSON walked and compared with the
 * signed fields), logs() and transfers() check infos and pick the transfers to build, merkle_root()
 * hashes the trie. They take only exact dicts, lists, str and ints, never raise for what the node sent,
 * and decline anything else to the Python checks, which decide and name what is wrong.
 *
 * Every read is bounds-checked against the end of the message it is in with subtractions (never
 * `offset + length` compared after the addition could wrap), and every offset stays at most that end.
 *
 * The file is over 500 lines and stays whole: it is one extension module whose functions share static
 * helpers (the SHA-256 context, the protobuf varint and length readers, the exact-type checks of the
 * node's JSON); split across files they would need a private header and a build of several sources.
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

/* Each byte's value as a hex digit, or 0xFF. */
static unsigned char hex_digit[256];

static void
init_hex_digits(void)
{
    memset(hex_digit, 0xFF, sizeof hex_digit);
    for (unsigned c = 0; c < 10; c++) {
        hex_digit['0' + c] = (unsigned char)c;
    }
    for (unsigned c = 0; c < 6; c++) {
        hex_digit['a' + c] = (unsigned char)(10 + c);
        hex_digit['A' + c] = (unsigned char)(10 + c);
    }
}

/* The bytes of an ASCII hex string of hex digits only into out (len / 2 bytes): 0, or -1. */
static int
unhex(PyObject *text, unsigned char *out, size_t *size, size_t capacity)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_READY(text) || !PyUnicode_IS_ASCII(text)) {
        return -1;
    }
    size_t len = (size_t)PyUnicode_GET_LENGTH(text);
    if (len % 2 || len / 2 > capacity) {
        return -1;
    }
    const unsigned char *h = PyUnicode_1BYTE_DATA(text);
    unsigned bad = 0;
    for (size_t k = 0; k < len / 2; k++) {
        unsigned high = hex_digit[h[2 * k]], low = hex_digit[h[2 * k + 1]];
        bad |= high | low;
        out[k] = (unsigned char)(high << 4 | low);
    }
    if (bad & 0xF0) {
        return -1;
    }
    *size = len / 2;
    return 0;
}

static const char lower_digits[] = "0123456789abcdef";

/* Whether text is exactly a str of the lowercase hex of p[0:len] (what `bytes.hex()` gives). */
static int
is_hex_of(PyObject *text, const unsigned char *p, size_t len)
{
    if (text == NULL || !PyUnicode_CheckExact(text) || !PyUnicode_IS_READY(text) || !PyUnicode_IS_ASCII(text) ||
        (size_t)PyUnicode_GET_LENGTH(text) != 2 * len) {
        return 0;
    }
    const unsigned char *h = PyUnicode_1BYTE_DATA(text);
    for (size_t k = 0; k < len; k++) {
        if (h[2 * k] != (unsigned char)lower_digits[p[k] >> 4] ||
            h[2 * k + 1] != (unsigned char)lower_digits[p[k] & 15]) {
            return 0;
        }
    }
    return 1;
}

/* sha256 of a message given in parts. */
static void
sha256_parts(const unsigned char *const *parts, const size_t *sizes, int count, unsigned char digest[32])
{
    SHA256_CTX c;
    SHA256_Init(&c);
    for (int k = 0; k < count; k++) {
        SHA256_Update(&c, parts[k], sizes[k]);
    }
    SHA256_Final(digest, &c);
}

/* The hashes of a usual transaction: its txID as lowercase hex text (txid_hex, 64 characters) and its
 * trie leaf, sha256 of the whole `Transaction`: raw data = 1, the one 65-byte signature = 2, then `tail`. */
static void
hash_transaction(const unsigned char *raw, size_t n, const unsigned char signature[65], const unsigned char *tail,
                 size_t tail_size, char txid_hex[64], unsigned char leaf[32])
{
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
    const unsigned char *parts[5] = {head, raw, signature_key, signature, tail};
    size_t sizes[5] = {head_size, n, 2, 65, tail_size};
    sha256_parts(parts, sizes, 5, leaf);
    sha256_parts(&raw, &n, 1, digest); /* SHA256_Init and its kin: SHA256() fetches the digest each call */
    for (int k = 0; k < 32; k++) {
        txid_hex[2 * k] = lower_digits[digest[k] >> 4];
        txid_hex[2 * k + 1] = lower_digits[digest[k] & 15];
    }
}

static PyObject *
ascii_text(const char *text, Py_ssize_t size)
{
    PyObject *out = PyUnicode_New(size, 127);
    if (out != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(out), text, (size_t)size);
    }
    return out;
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
    char txid_hex[64];
    unsigned char digest[32];
    hash_transaction(raw, n, signature, (const unsigned char *)PyBytes_AS_STRING(args[2]),
                     (size_t)PyBytes_GET_SIZE(args[2]), txid_hex, digest);
    PyObject *leaf = PyBytes_FromStringAndSize((const char *)digest, 32);
    PyObject *txid = ascii_text(txid_hex, 64);
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

/* ------------------------------------------------------------------------------------------------
 * usual(tails, tx): tron_txs._usual_transaction in one call, the JSON walked with the C API.
 *
 * tx is a transaction as the node's JSON gives it; tails maps each `contractRet` name to
 * (the encoded result field, whether a contract call with it succeeded, whether another contract
 * with it succeeded). The usual shape is exact dicts, lists, str and int (what a JSON parser builds):
 * one 65-byte signature, one `{"contractRet": NAME}` result, the raw data in java-tron's layout,
 * txID and the contract's JSON fields equal to the signed ones as the node writes them (lowercase
 * hex, amounts as plain ints, left out when 0 or empty, no other field). For it the answer is
 *
 *     (txid_hex, leaf, (fields, success))
 *
 * and None for anything else, failures included: the caller then checks the transaction field by
 * field, which decides and names what is wrong. Declining more than the Python reading is always
 * safe; accepting anything the field-by-field checks refuse never is (the tests hold it to that).
 *
 * Every object read from the JSON is held by a new reference until the call ends: a dict lookup may
 * run a key's __eq__, which may change the containers.
 */

static PyObject *key_raw_data_hex, *key_signature, *key_ret, *key_contract_ret, *key_txid, *key_raw_data,
    *key_contract, *key_parameter, *key_value, *key_owner_address, *key_to_address, *key_contract_address,
    *key_amount, *key_call_value, *key_data, *key_asset_name;

#define HELD_MAX 24 /* a usual transaction holds 17 */

typedef struct {
    PyObject *items[HELD_MAX];
    int count;
} Held;

static void
release(Held *held)
{
    for (int k = 0; k < held->count; k++) {
        Py_DECREF(held->items[k]);
    }
    held->count = 0;
}

static PyObject *
hold(Held *held, PyObject *item)
{
    Py_INCREF(item);
    held->items[held->count++] = item; /* at most HELD_MAX reads per call, counted below */
    return item;
}

/* dict[key] into *out, held: 1 found, 0 missing, -1 the lookup raised (cleared: the caller declines,
 * and the checks field by field meet the same error). dict must be an exact dict. */
static int
lookup(Held *held, PyObject *dict, PyObject *key, PyObject **out)
{
    *out = NULL;
    if (held->count >= HELD_MAX) {
        return -1;
    }
    PyObject *item = PyDict_GetItemWithError(dict, key);
    if (item == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return 0;
    }
    *out = hold(held, item);
    return 1;
}

/* The one element of an exact list of length 1, held, or NULL. */
static PyObject *
only_item(Held *held, PyObject *list)
{
    if (list == NULL || !PyList_CheckExact(list) || PyList_GET_SIZE(list) != 1 || held->count >= HELD_MAX) {
        return NULL;
    }
    return hold(held, PyList_GET_ITEM(list, 0));
}

/* Whether v is a plain int equal to want (want below 2**63). */
static int
is_int(PyObject *v, uint64_t want)
{
    if (!PyLong_CheckExact(v)) {
        return 0;
    }
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return !overflow && x >= 0 && (uint64_t)x == want;
}

/* Whether the contract's JSON (tx["raw_data"]["contract"][0]["parameter"]["value"]) says exactly what
 * the signed bytes say, in the node's usual form: tron_txs._json_agrees, stricter on types. */
static int
json_agrees(Held *held, PyObject *tx, const unsigned char *p, const Parsed *f)
{
    PyObject *raw_data, *entry, *parameter, *value, *item;
    if (lookup(held, tx, key_raw_data, &raw_data) != 1 || !PyDict_CheckExact(raw_data) ||
        lookup(held, raw_data, key_contract, &item) != 1 || (entry = only_item(held, item)) == NULL ||
        !PyDict_CheckExact(entry) || lookup(held, entry, key_parameter, &parameter) != 1 ||
        !PyDict_CheckExact(parameter) || lookup(held, parameter, key_value, &value) != 1 ||
        !PyDict_CheckExact(value)) {
        return 0;
    }
    if (lookup(held, value, key_owner_address, &item) != 1 || !is_hex_of(item, p + f->owner, 21)) {
        return 0;
    }
    Py_ssize_t shown = 2;
    int found;
    if (f->kind == 31) { /* call_value and data are left out when 0 or empty */
        if (lookup(held, value, key_contract_address, &item) != 1 || !is_hex_of(item, p + f->other, 21)) {
            return 0;
        }
        if ((found = lookup(held, value, key_call_value, &item)) < 0 || (found ? !is_int(item, f->amount) : f->amount)) {
            return 0;
        }
        shown += found;
        if ((found = lookup(held, value, key_data, &item)) < 0 ||
            (found ? !is_hex_of(item, p + f->data, f->data_len) : f->data_len != 0)) {
            return 0;
        }
        shown += found;
    }
    else {
        if (lookup(held, value, key_to_address, &item) != 1 || !is_hex_of(item, p + f->other, 21)) {
            return 0;
        }
        if ((found = lookup(held, value, key_amount, &item)) < 0 || (found ? !is_int(item, f->amount) : f->amount)) {
            return 0;
        }
        shown += found;
        if (f->has_asset) { /* TRC-10: asset_name too */
            if (lookup(held, value, key_asset_name, &item) != 1 || !is_hex_of(item, p + f->asset, f->asset_len)) {
                return 0;
            }
            shown++;
        }
    }
    return PyDict_GET_SIZE(value) == shown;
}

#define RAW_ON_STACK 1024

/* usual() for one transaction: a new reference to the answer (None to decline), or NULL with an
 * exception set. */
static PyObject *
usual_one(PyObject *tails, PyObject *tx)
{
    if (!PyDict_CheckExact(tx)) {
        Py_RETURN_NONE;
    }
    Held held = {.count = 0};
    unsigned char stack_raw[RAW_ON_STACK], *raw = stack_raw;
    PyObject *raw_hex, *signatures, *rets, *ret, *name, *signature, *given_txid, *result = NULL;
    if (lookup(&held, tx, key_raw_data_hex, &raw_hex) != 1 || !PyUnicode_CheckExact(raw_hex) ||
        lookup(&held, tx, key_signature, &signatures) != 1 || (signature = only_item(&held, signatures)) == NULL ||
        !PyUnicode_CheckExact(signature) || lookup(&held, tx, key_ret, &rets) != 1 ||
        (ret = only_item(&held, rets)) == NULL || !PyDict_CheckExact(ret) || PyDict_GET_SIZE(ret) != 1 ||
        lookup(&held, ret, key_contract_ret, &name) != 1 || !PyUnicode_CheckExact(name) ||
        lookup(&held, tx, key_txid, &given_txid) != 1 || !PyUnicode_CheckExact(given_txid)) {
        goto decline;
    }
    PyObject *entry = PyDict_GetItemWithError(tails, name); /* exact str keys: no code runs */
    if (entry == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        goto decline;
    }
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3 || !PyBytes_Check(PyTuple_GET_ITEM(entry, 0))) {
        PyErr_SetString(PyExc_TypeError, "usual(): tails maps names to (bytes, bool, bool)");
        goto done;
    }
    PyObject *tail = hold(&held, entry); /* held as the tuple */
    size_t capacity = (size_t)PyUnicode_GET_LENGTH(raw_hex) / 2, n, signature_size;
    if (capacity > RAW_ON_STACK) {
        raw = PyMem_Malloc(capacity);
        if (raw == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    unsigned char signature_bytes[65];
    Parsed f;
    if (unhex(raw_hex, raw, &n, capacity) || unhex(signature, signature_bytes, &signature_size, 65) ||
        signature_size != 65 || parse(raw, n, &f) || !json_agrees(&held, tx, raw, &f)) {
        goto decline;
    }
    char txid_hex[64];
    unsigned char leaf_bytes[32];
    PyObject *tail_bytes = PyTuple_GET_ITEM(tail, 0);
    hash_transaction(raw, n, signature_bytes, (const unsigned char *)PyBytes_AS_STRING(tail_bytes),
                     (size_t)PyBytes_GET_SIZE(tail_bytes), txid_hex, leaf_bytes);
    if (!PyUnicode_IS_READY(given_txid) || !PyUnicode_IS_ASCII(given_txid) ||
        PyUnicode_GET_LENGTH(given_txid) != 64 || memcmp(PyUnicode_1BYTE_DATA(given_txid), txid_hex, 64) != 0) {
        goto decline;
    }
    PyObject *success = PyTuple_GET_ITEM(tail, f.kind == 31 ? 1 : 2);
    PyObject *txid = ascii_text(txid_hex, 64);
    PyObject *leaf = PyBytes_FromStringAndSize((const char *)leaf_bytes, 32);
    PyObject *fields = fields_tuple(raw, &f);
    PyObject *checked = fields == NULL ? NULL : PyTuple_Pack(2, fields, success);
    if (txid != NULL && leaf != NULL && checked != NULL) {
        result = PyTuple_Pack(3, txid, leaf, checked);
    }
    Py_XDECREF(txid);
    Py_XDECREF(leaf);
    Py_XDECREF(fields);
    Py_XDECREF(checked);
    goto done;
decline:
    result = Py_NewRef(Py_None);
done:
    if (raw != stack_raw) {
        PyMem_Free(raw);
    }
    release(&held);
    return result;
}

static PyObject *
usual(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "usual(tails: dict, tx)");
        return NULL;
    }
    return usual_one(args[0], args[1]);
}

/* transactions(tails, items, checked, height): tron_txs._transactions in one call. Each transaction of
 * the list items is read by usual_one(), and any it declines by checked(item, height, position), the
 * field-by-field checks (whose errors pass through); the answer is (txID -> (fields, success), the trie
 * leaves in order), or None when items is not an exact list. */
static PyObject *
transactions(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_Check(args[0]) || !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "transactions(tails: dict, items, checked, height)");
        return NULL;
    }
    PyObject *tails = args[0], *items = args[1], *checked = args[2], *height = args[3];
    if (!PyList_CheckExact(items)) {
        Py_RETURN_NONE;
    }
    PyObject *txs = PyDict_New(), *leaves = PyList_New(0), *result = NULL;
    if (txs == NULL || leaves == NULL) {
        goto done;
    }
    /* checked() runs Python code: the list's length is read each time, each item held while read */
    for (Py_ssize_t position = 0; position < PyList_GET_SIZE(items); position++) {
        PyObject *item = Py_NewRef(PyList_GET_ITEM(items, position));
        PyObject *one = usual_one(tails, item);
        if (one == Py_None) {
            Py_DECREF(one);
            one = PyObject_CallFunction(checked, "OOn", item, height, position);
        }
        Py_DECREF(item);
        if (one == NULL) {
            goto done;
        }
        if (!PyTuple_Check(one) || PyTuple_GET_SIZE(one) != 3) {
            Py_DECREF(one);
            PyErr_SetString(PyExc_TypeError, "transactions(): checked() gives (txid, leaf, tx)");
            goto done;
        }
        int failed = PyDict_SetItem(txs, PyTuple_GET_ITEM(one, 0), PyTuple_GET_ITEM(one, 2)) ||
                     PyList_Append(leaves, PyTuple_GET_ITEM(one, 1));
        Py_DECREF(one);
        if (failed) {
            goto done;
        }
    }
    result = PyTuple_Pack(2, txs, leaves);
done:
    Py_XDECREF(txs);
    Py_XDECREF(leaves);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * logs(info, trc20, watch, revoked): tron_decode._token_logs for the node's usual JSON, in one call.
 *
 * info is a transaction info; trc20 maps a configured token contract's 20 bytes to its asset (an exact
 * dict); watch and revoked are containers of 20-byte keys, or None. The usual shape: `log` missing,
 * None or an exact list of exact dicts, each with `topics` an exact list of str; for each Transfer log
 * (three topics, the first the Transfer topic) `address` 40 hex digits, and, where the log is read
 * (a configured contract's, or another's touching a revoked key), the address topics 64 hex digits
 * with 24 leading zeros and `data` 64 hex digits. For it the answer is the list of the logs to build
 * transfers for, in order:
 *
 *     (position, contract, sender, recipient, amount word, listed)
 *
 * (a configured contract's log from or to a watched key, every one without watch; another contract's
 * from or to a revoked key), and None for anything else: the caller then reads the logs one by one,
 * which decides and names what is wrong. Containers' `in` may run code: every object read is held.
 */

static PyObject *key_log, *key_topics, *key_address, *transfer_topic;

/* The 20 bytes of an address topic as the node writes it (64 lowercase or capital hex digits, the first
 * 24 zeros: tron_decode._usual_account) into out: 0, or -1 for anything else. */
static int
usual_account(PyObject *topic, unsigned char out[20])
{
    if (!PyUnicode_CheckExact(topic) || !PyUnicode_IS_READY(topic) || !PyUnicode_IS_ASCII(topic) ||
        PyUnicode_GET_LENGTH(topic) != 64) {
        return -1;
    }
    const unsigned char *h = PyUnicode_1BYTE_DATA(topic);
    for (int k = 0; k < 24; k++) {
        if (h[k] != '0') {
            return -1;
        }
    }
    unsigned bad = 0;
    for (int k = 0; k < 20; k++) {
        unsigned high = hex_digit[h[24 + 2 * k]], low = hex_digit[h[25 + 2 * k]];
        bad |= high | low;
        out[k] = (unsigned char)(high << 4 | low);
    }
    return bad & 0xF0 ? -1 : 0;
}

/* The bytes of exactly `size` bytes of hex digits (either case) into out: 0, or -1 for anything else. */
static int
hex_exact(PyObject *text, unsigned char *out, size_t size)
{
    size_t got;
    if (!PyUnicode_CheckExact(text) || (size_t)PyUnicode_GET_LENGTH(text) != 2 * size ||
        unhex(text, out, &got, size)) {
        return -1;
    }
    return 0;
}

/* Whether key is in container (None: every key is): 1, 0, or -1 with an exception set. */
static int
contains(PyObject *container, const unsigned char key[20], PyObject **held_key)
{
    if (container == Py_None) {
        return 1;
    }
    if (*held_key == NULL && (*held_key = PyBytes_FromStringAndSize((const char *)key, 20)) == NULL) {
        return -1;
    }
    return PySequence_Contains(container, *held_key);
}

/* Appends the new reference `hit` (NULL when building it failed) to hits and releases it: 0, or -1 with an
 * exception set. */
static int
append_new(PyObject *hits, PyObject *hit)
{
    if (hit == NULL) {
        return -1;
    }
    int failed = PyList_Append(hits, hit);
    Py_DECREF(hit);
    return failed;
}

/* Appends (position, contract, sender, recipient, word, listed) to hits, or with txid given
 * (1, txid, position, contract, sender, recipient, word, listed): 0, or -1 with an exception set. */
static int
add_hit(PyObject *hits, PyObject *txid, Py_ssize_t position, const unsigned char contract[20], PyObject *sender,
        PyObject *recipient, const unsigned char word[32], int listed)
{
    return append_new(
        hits, txid == NULL
                  ? Py_BuildValue("(ny#OOy#O)", position, (const char *)contract, (Py_ssize_t)20, sender, recipient,
                                  (const char *)word, (Py_ssize_t)32, listed ? Py_True : Py_False)
                  : Py_BuildValue("(iOny#OOy#O)", 1, txid, position, (const char *)contract, (Py_ssize_t)20,
                                  sender, recipient, (const char *)word, (Py_ssize_t)32, listed ? Py_True : Py_False));
}

/* Appends (kind, txid, what) to hits: 0, or -1 with an exception set. */
static int
add_pair_hit(PyObject *hits, int kind, PyObject *txid, PyObject *what)
{
    return append_new(hits, Py_BuildValue("(iOO)", kind, txid, what));
}

/* The logs of an info (entries: its `log`, an exact list) read into hits (see logs() and transfers()):
 * 1, 0 to decline (the caller answers None), or -1 with an exception set. */
static int
read_logs(PyObject *entries, PyObject *trc20, PyObject *watch, PyObject *revoked, PyObject *txid, PyObject *hits)
{
    /* the list may change while it is read (a container's `in` runs code): its length is read each time */
    for (Py_ssize_t position = 0; position < PyList_GET_SIZE(entries); position++) {
        PyObject *entry = PyList_GET_ITEM(entries, position);
        if (!PyDict_CheckExact(entry)) {
            return 0;
        }
        Py_INCREF(entry);
        PyObject *topics = PyDict_GetItemWithError(entry, key_topics), *address = NULL, *data = NULL;
        PyObject *sender = NULL, *recipient = NULL, *first = NULL, *second = NULL, *third = NULL;
        int outcome = -1; /* -1 decline, 0 skip, 1 read */
        unsigned char contract[20], from[20], to[20], word[32];
        if (topics == NULL || !PyList_CheckExact(topics)) {
            goto next;
        }
        Py_INCREF(topics);
        if (PyList_GET_SIZE(topics) != 3) {
            /* not an ERC-20-shaped Transfer; its topics are not read */
            Py_DECREF(topics);
            outcome = 0;
            goto next;
        }
        first = Py_NewRef(PyList_GET_ITEM(topics, 0));
        second = Py_NewRef(PyList_GET_ITEM(topics, 1));
        third = Py_NewRef(PyList_GET_ITEM(topics, 2));
        Py_DECREF(topics);
        if (!PyUnicode_CheckExact(first)) {
            goto next;
        }
        if (first != transfer_topic && PyUnicode_Compare(first, transfer_topic) != 0) {
            outcome = 0;
            goto next;
        }
        address = PyDict_GetItemWithError(entry, key_address);
        if (address == NULL || hex_exact(address, contract, 20)) {
            goto next;
        }
        data = PyDict_GetItemWithError(entry, key_data);
        if (data == NULL && PyErr_Occurred()) {
            goto next;
        }
        Py_XINCREF(data);
        PyObject *contract_bytes = PyBytes_FromStringAndSize((const char *)contract, 20);
        if (contract_bytes == NULL) {
            goto fail_entry;
        }
        PyObject *asset = PyDict_GetItemWithError(trc20, contract_bytes); /* bytes keys: no code runs */
        Py_DECREF(contract_bytes);
        if (asset == NULL && PyErr_Occurred()) {
            goto fail_entry;
        }
        int listed = asset != NULL, found;
        if (!listed && revoked == Py_None) {
            outcome = 0;
            goto next;
        }
        if (usual_account(second, from) || usual_account(third, to)) {
            outcome = listed ? -1 : 0; /* another contract's log that is not ERC-20-shaped is skipped */
            goto next;
        }
        PyObject *touches = listed ? watch : revoked;
        if ((found = contains(touches, from, &sender)) < 0) {
            goto fail_entry;
        }
        if (!found && (found = contains(touches, to, &recipient)) < 0) {
            goto fail_entry;
        }
        if (data == NULL || hex_exact(data, word, 32)) {
            /* a configured contract's data must be a word whether or not the log is built, another's
             * only when the log is built: the checks decide (they read hex with spaces, str subclasses) */
            outcome = listed || found ? -1 : 0;
            goto next;
        }
        if (!found) {
            outcome = 0;
            goto next;
        }
        if ((sender == NULL && (sender = PyBytes_FromStringAndSize((const char *)from, 20)) == NULL) ||
            (recipient == NULL && (recipient = PyBytes_FromStringAndSize((const char *)to, 20)) == NULL) ||
            add_hit(hits, txid, position, contract, sender, recipient, word, listed)) {
            goto fail_entry;
        }
        outcome = 1;
    next:
        Py_DECREF(entry);
        Py_XDECREF(data);
        Py_XDECREF(first);
        Py_XDECREF(second);
        Py_XDECREF(third);
        Py_XDECREF(sender);
        Py_XDECREF(recipient);
        if (PyErr_Occurred()) {
            PyErr_Clear(); /* a lookup that raised: the checks meet the same error */
            return 0;
        }
        if (outcome < 0) {
            return 0;
        }
        continue;
    fail_entry:
        Py_DECREF(entry);
        Py_XDECREF(data);
        Py_XDECREF(first);
        Py_XDECREF(second);
        Py_XDECREF(third);
        Py_XDECREF(sender);
        Py_XDECREF(recipient);
        return -1;
    }
    return 1;
}

static PyObject *
logs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "logs(info, trc20: dict, watch, revoked)");
        return NULL;
    }
    PyObject *info = args[0], *trc20 = args[1], *watch = args[2], *revoked = args[3];
    if (!PyDict_CheckExact(info)) {
        Py_RETURN_NONE;
    }
    PyObject *entries = PyDict_GetItemWithError(info, key_log);
    if (entries == NULL || entries == Py_None) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        return PyList_New(0);
    }
    if (!PyList_CheckExact(entries)) {
        Py_RETURN_NONE;
    }
    Py_INCREF(entries);
    PyObject *hits = PyList_New(0), *result = NULL;
    int read = hits == NULL ? -1 : read_logs(entries, trc20, watch, revoked, NULL, hits);
    if (read > 0) {
        result = Py_NewRef(hits);
    }
    else if (read == 0) {
        result = Py_NewRef(Py_None);
    }
    Py_XDECREF(hits);
    Py_DECREF(entries);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * transfers(txs, infos, height, trc20, watch, revoked, internal): tron_decode's `_infos` and
 * `_transfers` for the node's usual JSON, in one call.
 *
 * txs is the block's checked transactions (txID -> (fields, success), tron_txs' dict), infos the
 * block's transaction infos as the node gives them. The infos are checked as `_infos` checks them (each
 * an object naming a transaction of the block once, of this block); in the usual shape (exact dicts,
 * str ids, `blockNumber` missing or a plain int, `receipt` missing, None or an exact dict whose `result`
 * is missing, None or a str, signed TRX and TRC-10 accounts of 21 bytes starting 0x41, logs as logs()
 * reads them) the answer is what to build transfers from, in `_transfers`' order:
 *
 *     (0, txid, fields)                                 a TRX or TRC-10 transfer from or to a watched key
 *     (1, txid, position, contract, sender, recipient, word, listed)   a Transfer log, as logs() gives it
 *     (2, txid, info)                                   an info with internal transactions to read
 *
 * and None for anything else: the caller then checks the infos and reads the transfers field by field,
 * which decides and names what is wrong.
 */

static PyObject *key_id, *key_block_number, *key_receipt, *key_result, *key_internal, *text_success;

/* Whether a signed account is 21 bytes starting 0x41: its 20 bytes into key (0), or -1. */
static int
signed_account(PyObject *account, unsigned char key[20])
{
    if (!PyBytes_CheckExact(account) || PyBytes_GET_SIZE(account) != 21 || PyBytes_AS_STRING(account)[0] != 0x41) {
        return -1;
    }
    memcpy(key, PyBytes_AS_STRING(account) + 1, 20);
    return 0;
}

/* The checked infos by txID (a new dict), or NULL: *declined set to decline, else an exception set. */
static PyObject *
infos_by_id(PyObject *txs, PyObject *infos, long long height, int *declined)
{
    *declined = 1;
    PyObject *by_id = PyDict_New();
    if (by_id == NULL) {
        *declined = 0;
        return NULL;
    }
    if (infos == Py_None) {
        return by_id;
    }
    if (!PyList_CheckExact(infos)) {
        goto decline;
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(infos); k++) {
        PyObject *info = PyList_GET_ITEM(infos, k), *id, *number;
        if (!PyDict_CheckExact(info)) {
            goto decline;
        }
        /* str keys of exact dicts, the txs dict's keys all exact str: no code runs in these lookups
         * unless the info holds keys of other types, and then the error or the change is declined */
        Py_INCREF(info);
        id = PyDict_GetItemWithError(info, key_id);
        if (id == NULL || !PyUnicode_CheckExact(id)) {
            Py_DECREF(info);
            goto decline;
        }
        Py_INCREF(id);
        int known = PyDict_Contains(txs, id), repeated = known > 0 ? PyDict_Contains(by_id, id) : 0;
        number = known > 0 && repeated == 0 ? PyDict_GetItemWithError(info, key_block_number) : NULL;
        int ok = known > 0 && repeated == 0 && (number == NULL ? !PyErr_Occurred() : is_int(number, (uint64_t)height));
        if (ok && PyDict_SetItem(by_id, id, info)) {
            Py_DECREF(id);
            Py_DECREF(info);
            *declined = 0;
            Py_DECREF(by_id);
            return NULL;
        }
        Py_DECREF(id);
        Py_DECREF(info);
        if (!ok) {
            goto decline;
        }
    }
    return by_id;
decline:
    PyErr_Clear();
    Py_DECREF(by_id);
    return NULL;
}

static PyObject *
transfers(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyDict_CheckExact(args[0]) || !PyLong_CheckExact(args[2]) || !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "transfers(txs: dict, infos, height: int, trc20: dict, watch, revoked, internal)");
        return NULL;
    }
    PyObject *txs = args[0], *infos = args[1], *trc20 = args[3], *watch = args[4], *revoked = args[5];
    int internal = PyObject_IsTrue(args[6]), declined;
    long long height = PyLong_AsLongLong(args[2]);
    if (internal < 0 || (height == -1 && PyErr_Occurred())) {
        return NULL;
    }
    if (height < 0) {
        Py_RETURN_NONE;
    }
    PyObject *by_id = infos_by_id(txs, infos, height, &declined);
    if (by_id == NULL) {
        if (declined) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    /* a copy of txs, which nothing else reaches: it does not change while it is read, whatever a
     * container's `in` does */
    PyObject *hits = PyList_New(0), *own = PyDict_Copy(txs), *result = NULL, *txid, *tx;
    if (hits == NULL || own == NULL) {
        goto done;
    }
    Py_ssize_t at = 0;
    while (PyDict_Next(own, &at, &txid, &tx)) {
        if (!PyTuple_CheckExact(tx) || PyTuple_GET_SIZE(tx) != 2 || !PyTuple_CheckExact(PyTuple_GET_ITEM(tx, 0)) ||
            PyTuple_GET_SIZE(PyTuple_GET_ITEM(tx, 0)) != 7) {
            PyErr_SetString(PyExc_TypeError, "transfers(): txs maps txIDs to (fields, success)");
            goto done;
        }
        if (PyTuple_GET_ITEM(tx, 1) != Py_True) {
            continue; /* did not succeed */
        }
        PyObject *fields = PyTuple_GET_ITEM(tx, 0);
        PyObject *info = PyDict_GetItemWithError(by_id, txid); /* held by by_id, which is ours */
        if (info == NULL && PyErr_Occurred()) {
            goto done;
        }
        if (info != NULL) {
            PyObject *receipt = PyDict_GetItemWithError(info, key_receipt);
            if (receipt != NULL && receipt != Py_None) {
                if (!PyDict_CheckExact(receipt)) {
                    goto decline;
                }
                /* both held: a key's __eq__ may drop them from the info while the receipt is searched */
                Py_INCREF(receipt);
                PyObject *outcome = PyDict_GetItemWithError(receipt, key_result);
                Py_XINCREF(outcome);
                Py_DECREF(receipt);
                int verdict; /* 1 succeeded, 0 failed, -1 decline */
                if (outcome != NULL && outcome != Py_None) {
                    verdict = PyUnicode_CheckExact(outcome) ? PyUnicode_Compare(outcome, text_success) == 0 : -1;
                }
                else {
                    verdict = PyErr_Occurred() ? -1 : 1;
                }
                Py_XDECREF(outcome);
                if (verdict < 0) {
                    goto decline;
                }
                if (verdict == 0) {
                    continue; /* the contract failed */
                }
            }
            else if (PyErr_Occurred()) {
                goto decline;
            }
        }
        PyObject *kind = PyTuple_GET_ITEM(fields, 0), *amount = PyTuple_GET_ITEM(fields, 4);
        if (!PyLong_CheckExact(kind) || !PyLong_CheckExact(amount)) {
            goto decline;
        }
        if ((is_int(kind, 1) || is_int(kind, 2)) && PyObject_IsTrue(amount) == 1) {
            unsigned char owner[20], to[20];
            PyObject *owner_key = NULL, *to_key = NULL;
            if (signed_account(PyTuple_GET_ITEM(fields, 1), owner) || signed_account(PyTuple_GET_ITEM(fields, 2), to)) {
                goto decline;
            }
            int found = contains(watch, owner, &owner_key);
            if (found == 0) {
                found = contains(watch, to, &to_key);
            }
            Py_XDECREF(owner_key);
            Py_XDECREF(to_key);
            if (found < 0) {
                goto done;
            }
            if (found) {
                if (add_pair_hit(hits, 0, txid, fields)) {
                    goto done;
                }
            }
        }
        else if (PyErr_Occurred()) {
            goto done;
        }
        if (info == NULL) {
            continue;
        }
        PyObject *entries = PyDict_GetItemWithError(info, key_log);
        if (entries != NULL && entries != Py_None) {
            if (!PyList_CheckExact(entries)) {
                goto decline;
            }
            Py_INCREF(entries);
            int read = read_logs(entries, trc20, watch, revoked, txid, hits);
            Py_DECREF(entries);
            if (read < 0) {
                goto done;
            }
            if (read == 0) {
                goto decline;
            }
        }
        else if (PyErr_Occurred()) {
            goto decline;
        }
        if (internal) {
            PyObject *items = PyDict_GetItemWithError(info, key_internal);
            if (items != NULL && items != Py_None) {
                if (add_pair_hit(hits, 2, txid, info)) {
                    goto done;
                }
            }
            else if (PyErr_Occurred()) {
                goto decline;
            }
        }
    }
    result = Py_NewRef(hits);
    goto done;
decline:
    PyErr_Clear();
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(hits);
    Py_XDECREF(own);
    Py_DECREF(by_id);
    return result;
}

/* merkle_root(leaves): tron_wire.merkle_root over a list of 32-byte leaves; None for any other argument. */
static PyObject *
merkle_root(PyObject *self, PyObject *leaves)
{
    if (!PyList_CheckExact(leaves)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyList_GET_SIZE(leaves);
    if (n == 0) {
        static const char empty[32];
        return PyBytes_FromStringAndSize(empty, 32);
    }
    unsigned char(*level)[32] = PyMem_Malloc((size_t)n * 32);
    if (level == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *leaf = PyList_GET_ITEM(leaves, k);
        if (!PyBytes_CheckExact(leaf) || PyBytes_GET_SIZE(leaf) != 32) {
            PyMem_Free(level);
            Py_RETURN_NONE;
        }
        memcpy(level[k], PyBytes_AS_STRING(leaf), 32);
    }
    while (n > 1) {
        Py_ssize_t pairs = n / 2;
        for (Py_ssize_t k = 0; k < pairs; k++) {
            SHA256_CTX c;
            SHA256_Init(&c);
            SHA256_Update(&c, level[2 * k], 64);
            SHA256_Final(level[k], &c);
        }
        if (n % 2) {
            memmove(level[pairs], level[n - 1], 32);
        }
        n = pairs + n % 2;
    }
    PyObject *root = PyBytes_FromStringAndSize((const char *)level[0], 32);
    PyMem_Free(level);
    return root;
}

static PyMethodDef methods[] = {
    {"fields", (PyCFunction)fields, METH_O,
     "fields(raw): the SignedFields of raw data in java-tron's layout, or None for any other layout."},
    {"transaction", (PyCFunction)(void (*)(void))transaction, METH_FASTCALL,
     "transaction(raw_hex, signature_hex, tail): (txid_hex, leaf, fields) of a usual transaction, or None."},
    {"usual", (PyCFunction)(void (*)(void))usual, METH_FASTCALL,
     "usual(tails, tx): (txid_hex, leaf, (fields, success)) of a transaction's usual JSON, or None."},
    {"transactions", (PyCFunction)(void (*)(void))transactions, METH_FASTCALL,
     "transactions(tails, items, checked, height): (txID -> (fields, success), leaves) of a block's transactions."},
    {"logs", (PyCFunction)(void (*)(void))logs, METH_FASTCALL,
     "logs(info, trc20, watch, revoked): the Transfer logs to build transfers for, or None."},
    {"transfers", (PyCFunction)(void (*)(void))transfers, METH_FASTCALL,
     "transfers(txs, infos, height, trc20, watch, revoked, internal): what to build a block's transfers from, "
     "or None."},
    {"merkle_root", (PyCFunction)merkle_root, METH_O,
     "merkle_root(leaves): the transaction trie root over a list of 32-byte leaves, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "depositwatch.chains._tronscan",
    .m_doc = "The compiled fast paths of the TRON decode: the contract reading, the usual transactions' and "
              "infos' checks, the trie root.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__tronscan(void)
{
    init_hex_digits();
    struct {
        PyObject **key;
        const char *text;
    } keys[] = {
        {&key_raw_data_hex, "raw_data_hex"},   {&key_signature, "signature"},
        {&key_ret, "ret"},                     {&key_contract_ret, "contractRet"},
        {&key_txid, "txID"},                   {&key_raw_data, "raw_data"},
        {&key_contract, "contract"},           {&key_parameter, "parameter"},
        {&key_value, "value"},                 {&key_owner_address, "owner_address"},
        {&key_to_address, "to_address"},       {&key_contract_address, "contract_address"},
        {&key_amount, "amount"},               {&key_call_value, "call_value"},
        {&key_data, "data"},                   {&key_asset_name, "asset_name"},
        {&key_log, "log"},                     {&key_topics, "topics"},
        {&key_address, "address"},             {&key_id, "id"},
        {&key_block_number, "blockNumber"},    {&key_receipt, "receipt"},
        {&key_result, "result"},               {&key_internal, "internal_transactions"},
        {&text_success, "SUCCESS"},
        {&transfer_topic, "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"},
    };
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        if (*keys[k].key == NULL && (*keys[k].key = PyUnicode_InternFromString(keys[k].text)) == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
