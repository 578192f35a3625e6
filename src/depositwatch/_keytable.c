/*
 * depositwatch._keytable: the compiled layout of a chain's watched keys (keytable.py is the reference).
 *
 * A KeyTable holds bytes keys, each active or revoked at a time (an int64), with no Python object per
 * key. Keys of each length live in their own open-addressing table of fixed-size slots:
 *
 *     [u32 value][key bytes]    value 0: empty slot, 1: active, 2 + i: revoked at stamps[i]
 *
 * Linear probing from slot floor(hash * capacity / 2^64), where hash is CPython's hash of the bytes
 * (SipHash with the process's random key, so a block's keys cannot be chosen to collide), at most 3/4
 * full; a table that would pass that grows by half. Removal shifts the following slots back, so there
 * are no tombstones. Revocation times are kept once each (mass revocations share one second) in an
 * int64 array, found again through a small hash index.
 *
 * KeyTable.get(key) answers with one probe: None (not watched), the marker object given to the
 * constructor (active), or the revocation time. KeyTable.active() and .revoked() give views that
 * behave as the set of active keys and the dict of revoked keys to their times, for the code that
 * reads a book that way, including the compiled Bitcoin scan (through sq_contains).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define EMPTY 0u
#define ACTIVE 1u
#define FIRST_STAMP 2u
#define MAX_STAMPS ((size_t)UINT32_MAX - FIRST_STAMP)
#define FAST_LENGTHS 65 /* key lengths with a direct index; longer ones are searched in a list */
#define MIN_CAPACITY 8

#if PY_VERSION_HEX >= 0x030E0000
#define HASH_BYTES(p, n) Py_HashBuffer((p), (n))
#else
#define HASH_BYTES(p, n) _Py_HashBytes((p), (n))
#endif

typedef struct {
    size_t len;  /* key length */
    size_t slot; /* len + 4 */
    size_t cap, used;
    unsigned char *slots;
} Sub;

typedef struct {
    PyObject_HEAD
    PyObject *marker; /* what get() answers for an active key */
    Sub **subs;       /* one per key length, in creation order */
    size_t n_subs;
    Sub *fast[FAST_LENGTHS];
    int64_t *stamps;
    size_t n_stamps, cap_stamps;
    uint32_t *stamp_index; /* open addressing, power-of-two size: 1 + index into stamps, 0 empty */
    size_t stamp_index_cap;
    Py_ssize_t n_active, n_revoked;
    uint64_t version; /* bumped when a key is added or removed: iterators check it */
} Table;

typedef struct {
    PyObject_HEAD
    Table *table;
} View;

typedef struct {
    PyObject_HEAD
    Table *table;
    int revoked; /* 0: active keys, 1: revoked keys */
    size_t sub, at;
    uint64_t version;
} Iter;

static PyTypeObject TableType, ActiveType, RevokedType, IterType;

/* ------------------------------------------------------------------------------------------ */
/* Slots */

static inline uint32_t
slot_value(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void
set_value(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static inline size_t
home(uint64_t h, size_t cap)
{
    return (size_t)(((__uint128_t)h * cap) >> 64);
}

/* 1 with *at the key's slot, or 0 with *at the empty slot where it would go */
static inline int
find(const Sub *s, const unsigned char *key, uint64_t h, size_t *at)
{
    size_t i = home(h, s->cap);
    for (;;) {
        const unsigned char *p = s->slots + i * s->slot;
        if (slot_value(p) == EMPTY) {
            *at = i;
            return 0;
        }
        if (memcmp(p + 4, key, s->len) == 0) {
            *at = i;
            return 1;
        }
        if (++i == s->cap) {
            i = 0;
        }
    }
}

static int
sub_resize(Sub *s, size_t cap)
{
    if (cap > SIZE_MAX / s->slot) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned char *slots = PyMem_RawCalloc(cap, s->slot);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t j = 0; j < s->cap; j++) {
        const unsigned char *p = s->slots + j * s->slot;
        if (slot_value(p) == EMPTY) {
            continue;
        }
        size_t i = home((uint64_t)HASH_BYTES(p + 4, (Py_ssize_t)s->len), cap);
        while (slot_value(slots + i * s->slot) != EMPTY) {
            if (++i == cap) {
                i = 0;
            }
        }
        memcpy(slots + i * s->slot, p, s->slot);
    }
    PyMem_RawFree(s->slots);
    s->slots = slots;
    s->cap = cap;
    return 0;
}

static Sub *
sub_of(const Table *t, size_t len)
{
    if (len < FAST_LENGTHS) {
        return t->fast[len];
    }
    for (size_t k = 0; k < t->n_subs; k++) {
        if (t->subs[k]->len == len) {
            return t->subs[k];
        }
    }
    return NULL;
}

static Sub *
sub_new(Table *t, size_t len)
{
    if (len > SIZE_MAX / 2 - 4) {
        PyErr_NoMemory();
        return NULL;
    }
    Sub **subs = PyMem_RawRealloc(t->subs, (t->n_subs + 1) * sizeof(Sub *));
    if (subs == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    t->subs = subs;
    Sub *s = PyMem_RawCalloc(1, sizeof(Sub));
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    s->len = len;
    s->slot = len + 4;
    s->slots = PyMem_RawCalloc(MIN_CAPACITY, s->slot);
    if (s->slots == NULL) {
        PyMem_RawFree(s);
        PyErr_NoMemory();
        return NULL;
    }
    s->cap = MIN_CAPACITY;
    t->subs[t->n_subs++] = s;
    if (len < FAST_LENGTHS) {
        t->fast[len] = s;
    }
    return s;
}

/* Remove slot i, shifting back the slots of its cluster that may move (no tombstones). */
static void
remove_at(Sub *s, size_t i)
{
    size_t j = i;
    for (;;) {
        if (++j == s->cap) {
            j = 0;
        }
        unsigned char *q = s->slots + j * s->slot;
        if (slot_value(q) == EMPTY) {
            break;
        }
        size_t k = home((uint64_t)HASH_BYTES(q + 4, (Py_ssize_t)s->len), s->cap);
        /* q stays if its home is cyclically in (i, j] */
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            memcpy(s->slots + i * s->slot, q, s->slot);
            i = j;
        }
    }
    memset(s->slots + i * s->slot, 0, s->slot);
    s->used--;
}

/* ------------------------------------------------------------------------------------------ */
/* Revocation times */

static inline size_t
stamp_home(int64_t stamp, size_t cap)
{
    uint64_t x = (uint64_t)stamp * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(x ^ (x >> 29)) & (cap - 1);
}

static int
stamp_code(Table *t, int64_t stamp, uint32_t *code)
{
    if ((t->n_stamps + 1) * 2 > t->stamp_index_cap) {
        size_t cap = t->stamp_index_cap ? t->stamp_index_cap * 2 : 64;
        uint32_t *index = PyMem_RawCalloc(cap, sizeof(uint32_t));
        if (index == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t k = 0; k < t->n_stamps; k++) {
            size_t i = stamp_home(t->stamps[k], cap);
            while (index[i] != 0) {
                i = (i + 1) & (cap - 1);
            }
            index[i] = (uint32_t)(k + 1);
        }
        PyMem_RawFree(t->stamp_index);
        t->stamp_index = index;
        t->stamp_index_cap = cap;
    }
    size_t i = stamp_home(stamp, t->stamp_index_cap);
    for (;;) {
        uint32_t k = t->stamp_index[i];
        if (k == 0) {
            break;
        }
        if (t->stamps[k - 1] == stamp) {
            *code = FIRST_STAMP + (k - 1);
            return 0;
        }
        i = (i + 1) & (t->stamp_index_cap - 1);
    }
    if (t->n_stamps >= MAX_STAMPS) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct revocation times");
        return -1;
    }
    if (t->n_stamps == t->cap_stamps) {
        size_t cap = t->cap_stamps ? t->cap_stamps * 2 : 16;
        int64_t *stamps = PyMem_RawRealloc(t->stamps, cap * sizeof(int64_t));
        if (stamps == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->stamps = stamps;
        t->cap_stamps = cap;
    }
    t->stamps[t->n_stamps] = stamp;
    t->stamp_index[i] = (uint32_t)(t->n_stamps + 1);
    *code = FIRST_STAMP + (uint32_t)t->n_stamps;
    t->n_stamps++;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Lookups */

/* The key's value, EMPTY if it is not there (or not bytes); -1 on error (a hash that failed). */
static inline int64_t
value_of(const Table *t, PyObject *key)
{
    if (!PyBytes_Check(key)) {
        return EMPTY;
    }
    const Sub *s = sub_of(t, (size_t)PyBytes_GET_SIZE(key));
    if (s == NULL || s->used == 0) {
        return EMPTY;
    }
    Py_hash_t h = PyBytes_CheckExact(key) ? PyObject_Hash(key) : HASH_BYTES(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
    if (h == -1 && PyErr_Occurred()) {
        return -1;
    }
    size_t at;
    if (!find(s, (const unsigned char *)PyBytes_AS_STRING(key), (uint64_t)h, &at)) {
        return EMPTY;
    }
    return slot_value(s->slots + at * s->slot);
}

static PyObject *
stamp_of(const Table *t, int64_t v)
{
    return PyLong_FromLongLong(t->stamps[v - FIRST_STAMP]);
}

static PyObject *
Table_get(Table *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int64_t v = value_of(t, args[0]);
    if (v < 0) {
        return NULL;
    }
    if (v == EMPTY) {
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    }
    if (v == ACTIVE) {
        return Py_NewRef(t->marker);
    }
    return stamp_of(t, v);
}

/* ------------------------------------------------------------------------------------------ */
/* Changes */

static PyObject *
Table_set(Table *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "set() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *key = args[0], *when = args[1];
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "a key is bytes, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    uint32_t code = ACTIVE;
    if (when != Py_None) {
        if (!PyLong_Check(when)) {
            PyErr_Format(PyExc_TypeError, "a revocation time is an int or None, not %.100s", Py_TYPE(when)->tp_name);
            return NULL;
        }
        long long stamp = PyLong_AsLongLong(when);
        if (stamp == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (stamp_code(t, (int64_t)stamp, &code) < 0) {
            return NULL;
        }
    }
    size_t len = (size_t)PyBytes_GET_SIZE(key);
    Sub *s = sub_of(t, len);
    if (s == NULL && (s = sub_new(t, len)) == NULL) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(key);
    Py_hash_t h = HASH_BYTES(data, (Py_ssize_t)len);
    size_t at;
    if (find(s, data, (uint64_t)h, &at)) {
        unsigned char *p = s->slots + at * s->slot;
        uint32_t old = slot_value(p);
        if (old == ACTIVE) {
            t->n_active--;
        }
        else {
            t->n_revoked--;
        }
        set_value(p, code);
    }
    else {
        if ((s->used + 1) * 4 > s->cap * 3) {
            size_t cap = s->cap + s->cap / 2;
            if (sub_resize(s, cap) < 0) {
                return NULL;
            }
            find(s, data, (uint64_t)h, &at);
        }
        unsigned char *p = s->slots + at * s->slot;
        set_value(p, code);
        memcpy(p + 4, data, len);
        s->used++;
        t->version++;
    }
    if (code == ACTIVE) {
        t->n_active++;
    }
    else {
        t->n_revoked++;
    }
    Py_RETURN_NONE;
}

static PyObject *
Table_discard(Table *t, PyObject *key)
{
    if (!PyBytes_Check(key)) {
        Py_RETURN_FALSE;
    }
    size_t len = (size_t)PyBytes_GET_SIZE(key);
    Sub *s = sub_of(t, len);
    if (s == NULL || s->used == 0) {
        Py_RETURN_FALSE;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(key);
    size_t at;
    if (!find(s, data, (uint64_t)HASH_BYTES(data, (Py_ssize_t)len), &at)) {
        Py_RETURN_FALSE;
    }
    if (slot_value(s->slots + at * s->slot) == ACTIVE) {
        t->n_active--;
    }
    else {
        t->n_revoked--;
    }
    remove_at(s, at);
    t->version++;
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------------------------------------ */
/* The table */

static PyObject *
Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *marker;
    static char *kwlist[] = {"marker", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:KeyTable", kwlist, &marker)) {
        return NULL;
    }
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (t == NULL) {
        return NULL;
    }
    t->marker = Py_NewRef(marker);
    return (PyObject *)t;
}

static void
Table_dealloc(Table *t)
{
    for (size_t k = 0; k < t->n_subs; k++) {
        PyMem_RawFree(t->subs[k]->slots);
        PyMem_RawFree(t->subs[k]);
    }
    PyMem_RawFree(t->subs);
    PyMem_RawFree(t->stamps);
    PyMem_RawFree(t->stamp_index);
    Py_XDECREF(t->marker);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t
Table_len(Table *t)
{
    return t->n_active + t->n_revoked;
}

static PyObject *
view_new(PyTypeObject *type, Table *t)
{
    View *v = PyObject_New(View, type);
    if (v == NULL) {
        return NULL;
    }
    v->table = (Table *)Py_NewRef(t);
    return (PyObject *)v;
}

static PyObject *
Table_active(Table *t, PyObject *Py_UNUSED(ignored))
{
    return view_new(&ActiveType, t);
}

static PyObject *
Table_revoked(Table *t, PyObject *Py_UNUSED(ignored))
{
    return view_new(&RevokedType, t);
}

static PyObject *
Table_sizeof(Table *t, PyObject *Py_UNUSED(ignored))
{
    size_t n = sizeof(Table) + t->n_subs * (sizeof(Sub *) + sizeof(Sub)) + t->cap_stamps * sizeof(int64_t) +
               t->stamp_index_cap * sizeof(uint32_t);
    for (size_t k = 0; k < t->n_subs; k++) {
        n += t->subs[k]->cap * t->subs[k]->slot;
    }
    return PyLong_FromSize_t(n);
}

static PyObject *
Table_reserve(Table *t, PyObject *const *args, Py_ssize_t nargs)
{
    /* reserve(length, count): room for `count` keys of `length` bytes without growing (a load that knows
       its counts never holds a table's old and new slots at once) */
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "reserve() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t len = PyLong_AsSsize_t(args[0]);
    if (len == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (len < 0 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "a key length and a count are not negative");
        return NULL;
    }
    if ((size_t)count > (SIZE_MAX - 1) / 4) {
        PyErr_NoMemory();
        return NULL;
    }
    Sub *s = sub_of(t, (size_t)len);
    if (s == NULL && (s = sub_new(t, (size_t)len)) == NULL) {
        return NULL;
    }
    /* at most three quarters full with `count` keys, as `set` keeps it */
    size_t cap = ((size_t)count * 4 + 2) / 3;
    if (cap > s->cap) {
        if (sub_resize(s, cap) < 0) {
            return NULL;
        }
        t->version++;
    }
    Py_RETURN_NONE;
}

static PyObject *
Table_layout(Table *t, PyObject *Py_UNUSED(ignored))
{
    /* {key length: (keys, slots)}: for tests and benchmarks */
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    for (size_t k = 0; k < t->n_subs; k++) {
        const Sub *s = t->subs[k];
        PyObject *len = PyLong_FromSize_t(s->len), *pair = Py_BuildValue("(nn)", (Py_ssize_t)s->used, (Py_ssize_t)s->cap);
        if (len == NULL || pair == NULL || PyDict_SetItem(out, len, pair) < 0) {
            Py_XDECREF(len);
            Py_XDECREF(pair);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(len);
        Py_DECREF(pair);
    }
    return out;
}

static PyObject *
Table_get_n_active(Table *t, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(t->n_active);
}

static PyObject *
Table_get_n_revoked(Table *t, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(t->n_revoked);
}

static PyMethodDef Table_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Table_get, METH_FASTCALL,
     "get(key, default=None): the marker if the key is active, its revocation time if revoked, else default."},
    {"set", (PyCFunction)(void (*)(void))Table_set, METH_FASTCALL,
     "set(key, revoked_at): add or replace a key, active when revoked_at is None."},
    {"discard", (PyCFunction)Table_discard, METH_O, "discard(key): remove a key; whether it was there."},
    {"active", (PyCFunction)Table_active, METH_NOARGS, "A live view of the active keys, as a set."},
    {"revoked", (PyCFunction)Table_revoked, METH_NOARGS, "A live view of the revoked keys and times, as a dict."},
    {"layout", (PyCFunction)Table_layout, METH_NOARGS, "{key length: (keys, slots)}."},
    {"reserve", (PyCFunction)(void (*)(void))Table_reserve, METH_FASTCALL,
     "reserve(length, count): room for count keys of that length without growing."},
    {"__sizeof__", (PyCFunction)Table_sizeof, METH_NOARGS, "Bytes held, the slots included."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Table_getset[] = {
    {"n_active", (getter)Table_get_n_active, NULL, "active keys", NULL},
    {"n_revoked", (getter)Table_get_n_revoked, NULL, "revoked keys", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Table_as_sequence = {
    .sq_length = (lenfunc)Table_len,
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "depositwatch._keytable.KeyTable",
    .tp_basicsize = sizeof(Table),
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_as_sequence = &Table_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KeyTable(marker): bytes keys, each active or revoked at a time, in fixed-size slots.",
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
    .tp_new = Table_new,
};

/* ------------------------------------------------------------------------------------------ */
/* Views */

static void
View_dealloc(View *v)
{
    Py_DECREF(v->table);
    PyObject_Free(v);
}

static Py_ssize_t
Active_len(View *v)
{
    return v->table->n_active;
}

static Py_ssize_t
Revoked_len(View *v)
{
    return v->table->n_revoked;
}

static int
Active_contains(View *v, PyObject *key)
{
    int64_t x = value_of(v->table, key);
    return x < 0 ? -1 : x == ACTIVE;
}

static int
Revoked_contains(View *v, PyObject *key)
{
    int64_t x = value_of(v->table, key);
    return x < 0 ? -1 : x >= FIRST_STAMP;
}

static PyObject *
iter_new(Table *t, int revoked)
{
    Iter *it = PyObject_New(Iter, &IterType);
    if (it == NULL) {
        return NULL;
    }
    it->table = (Table *)Py_NewRef(t);
    it->revoked = revoked;
    it->sub = 0;
    it->at = 0;
    it->version = t->version;
    return (PyObject *)it;
}

static PyObject *
Active_iter(View *v)
{
    return iter_new(v->table, 0);
}

static PyObject *
Revoked_iter(View *v)
{
    return iter_new(v->table, 1);
}

/* a | b with a view on either side: a new set */
static PyObject *
View_or(PyObject *a, PyObject *b)
{
    PyObject *out = PySet_New(a);
    if (out == NULL) {
        return NULL;
    }
    PyObject *it = PyObject_GetIter(b), *key;
    if (it == NULL) {
        Py_DECREF(out);
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            Py_RETURN_NOTIMPLEMENTED;
        }
        return NULL;
    }
    while ((key = PyIter_Next(it)) != NULL) {
        int failed = PySet_Add(out, key);
        Py_DECREF(key);
        if (failed < 0) {
            break;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *
Revoked_get(View *v, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int64_t x = value_of(v->table, args[0]);
    if (x < 0) {
        return NULL;
    }
    if (x < FIRST_STAMP) {
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    }
    return stamp_of(v->table, x);
}

static PyObject *
Revoked_subscript(View *v, PyObject *key)
{
    int64_t x = value_of(v->table, key);
    if (x < 0) {
        return NULL;
    }
    if (x < FIRST_STAMP) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return stamp_of(v->table, x);
}

static PyObject *
Revoked_keys(View *v, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(v);
}

static PyObject *
Active_table(View *v, void *Py_UNUSED(closure))
{
    return Py_NewRef(v->table);
}

static PySequenceMethods Active_as_sequence = {
    .sq_length = (lenfunc)Active_len,
    .sq_contains = (objobjproc)Active_contains,
};

static PySequenceMethods Revoked_as_sequence = {
    .sq_length = (lenfunc)Revoked_len,
    .sq_contains = (objobjproc)Revoked_contains,
};

static PyMappingMethods Revoked_as_mapping = {
    .mp_length = (lenfunc)Revoked_len,
    .mp_subscript = (binaryfunc)Revoked_subscript,
};

static PyNumberMethods View_as_number = {
    .nb_or = View_or,
};

static PyMethodDef Revoked_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Revoked_get, METH_FASTCALL,
     "get(key, default=None): the key's revocation time if it is revoked, else default."},
    {"keys", (PyCFunction)Revoked_keys, METH_NOARGS, "The view itself: it iterates over and contains the keys."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef View_getset[] = {
    {"table", (getter)Active_table, NULL, "the KeyTable seen", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ActiveType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "depositwatch._keytable.ActiveKeys",
    .tp_basicsize = sizeof(View),
    .tp_dealloc = (destructor)View_dealloc,
    .tp_as_number = &View_as_number,
    .tp_as_sequence = &Active_as_sequence,
    .tp_iter = (getiterfunc)Active_iter,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The active keys of a KeyTable, as a set (live).",
    .tp_getset = View_getset,
};

static PyTypeObject RevokedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "depositwatch._keytable.RevokedKeys",
    .tp_basicsize = sizeof(View),
    .tp_dealloc = (destructor)View_dealloc,
    .tp_as_number = &View_as_number,
    .tp_as_sequence = &Revoked_as_sequence,
    .tp_as_mapping = &Revoked_as_mapping,
    .tp_iter = (getiterfunc)Revoked_iter,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The revoked keys of a KeyTable and their revocation times, as a dict (live).",
    .tp_methods = Revoked_methods,
    .tp_getset = View_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* Iteration */

static void
Iter_dealloc(Iter *it)
{
    Py_DECREF(it->table);
    PyObject_Free(it);
}

static PyObject *
Iter_next(Iter *it)
{
    Table *t = it->table;
    if (it->version != t->version) {
        PyErr_SetString(PyExc_RuntimeError, "the key table changed size during iteration");
        return NULL;
    }
    while (it->sub < t->n_subs) {
        const Sub *s = t->subs[it->sub];
        while (it->at < s->cap) {
            const unsigned char *p = s->slots + it->at * s->slot;
            it->at++;
            uint32_t v = slot_value(p);
            if (v != EMPTY && (v >= FIRST_STAMP) == it->revoked) {
                return PyBytes_FromStringAndSize((const char *)p + 4, (Py_ssize_t)s->len);
            }
        }
        it->sub++;
        it->at = 0;
    }
    return NULL;
}

static PyTypeObject IterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "depositwatch._keytable.KeyIterator",
    .tp_basicsize = sizeof(Iter),
    .tp_dealloc = (destructor)Iter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Iter_next,
};

/* ------------------------------------------------------------------------------------------ */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "depositwatch._keytable",
    .m_doc = "The compiled layout of a chain's watched keys (keytable.py is the reference).",
    .m_size = 0,
};

PyMODINIT_FUNC
PyInit__keytable(void)
{
    PyTypeObject *types[] = {&TableType, &ActiveType, &RevokedType, &IterType};
    for (size_t k = 0; k < sizeof(types) / sizeof(types[0]); k++) {
        if (PyType_Ready(types[k]) < 0) {
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "KeyTable", (PyObject *)&TableType) < 0 ||
        PyModule_AddObjectRef(m, "ActiveKeys", (PyObject *)&ActiveType) < 0 ||
        PyModule_AddObjectRef(m, "RevokedKeys", (PyObject *)&RevokedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
