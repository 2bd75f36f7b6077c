/* The admission of gateway/auth/_admission.c as Python sees it: its x-ratelimit-* headers, made as limits.py's
Admission.headers() makes them (limit and reset values kept, only the remaining count made per answer), and
the attributes limits.Admission has. Included by _admission.c after its structures. */

/* ---- the admission's x-ratelimit-* headers, as limits.py's Admission.headers() makes them ---- */

static PyObject *pair_of(PyObject *name, const char *text) {
    PyObject *v = PyBytes_FromString(text), *t;
    if (v == NULL) return NULL;
    t = PyTuple_Pack(2, name, v);
    Py_DECREF(v);
    return t;
}

static Py_ssize_t digits_of(int64_t v, char *end) {  /* v >= 0 written back from `end`: snprintf costs ~10x */
    char *d = end;
    do { *--d = (char)('0' + v % 10); v /= 10; } while (v);
    return end - d;
}

static void duration(int64_t ms, char *out, size_t size) {  /* Go's time.Duration text, limits.duration_ms */
    char sec[32];
    int64_t h, m, rest;
    if (ms <= 0) { snprintf(out, size, "0s"); return; }
    if (ms < 1000) { snprintf(out, size, "%lldms", (long long)ms); return; }
    h = ms / 3600000; rest = ms % 3600000; m = rest / 60000; rest %= 60000;
    if (rest % 1000 == 0) snprintf(sec, sizeof sec, "%lld", (long long)(rest / 1000));
    else {
        size_t n = (size_t)snprintf(sec, sizeof sec, "%lld.%03lld", (long long)(rest / 1000), (long long)(rest % 1000));
        while (sec[n - 1] == '0') sec[--n] = 0;
    }
    if (h) snprintf(out, size, "%lldh%lldm%ss", (long long)h, (long long)m, sec);
    else if (m) snprintf(out, size, "%lldm%ss", (long long)m, sec);
    else snprintf(out, size, "%ss", sec);
}

/* A trio's limit and reset headers, kept as (name, value) pairs: a limit is the same on every answer, a reset
nearly always the window's length. Only the remaining count is made per answer. */
static int trio_ends(Adm *a, int which, int64_t limit, double reset, Py_ssize_t ei, PyObject **lim_out,
                     PyObject **reset_out) {
    Store *s = a->store;
    char text[64];
    PyObject **lim = which ? &s->plans[a->plan].e[ei].tlim : &s->plans[a->plan].e[ei].rlim;
    if (*lim == NULL) {
        snprintf(text, sizeof text, "%lld", (long long)limit);
        if ((*lim = pair_of(NAMES[which * 3], text)) == NULL) return -1;
    }
    int64_t ms = (int64_t)ceil(reset * 1000 - 1e-6);
    if (s->reset_hdr[which] == NULL || s->reset_ms[which] != ms) {
        duration(ms, text, sizeof text);
        PyObject *r = pair_of(NAMES[which * 3 + 2], text);
        if (r == NULL) return -1;
        Py_XSETREF(s->reset_hdr[which], r);
        s->reset_ms[which] = ms;
    }
    *lim_out = *lim;
    *reset_out = s->reset_hdr[which];
    return 0;
}

static int add_trio(Adm *a, PyObject *out, int which, int64_t limit, int64_t remaining, double reset, Py_ssize_t ei) {
    PyObject *lim, *rst, *rem, *b;
    char digits[24];
    Py_ssize_t n = digits_of(remaining > 0 ? remaining : 0, digits + sizeof digits);
    if (trio_ends(a, which, limit, reset, ei, &lim, &rst) < 0) return -1;
    if ((b = PyBytes_FromStringAndSize(digits + sizeof digits - n, n)) == NULL) return -1;
    rem = PyTuple_Pack(2, NAMES[which * 3 + 1], b);
    Py_DECREF(b);
    if (rem == NULL) return -1;
    int bad = PyList_Append(out, lim) < 0 || PyList_Append(out, rem) < 0 || PyList_Append(out, rst) < 0;
    Py_DECREF(rem);
    return bad ? -1 : 0;
}

static PyObject *adm_headers(Adm *a, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    if (a->gen != a->store->gen) return out;  /* the store was closed */
    if ((a->has_r && add_trio(a, out, 0, a->rl, a->rr, a->rs, a->ri) < 0)
            || (a->has_t && add_trio(a, out, 1, a->tl, a->tr, a->ts, a->ti) < 0)) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* ---- block(): the same headers as HTTP/1.1 lines, b"name: value\r\n" each, for a response head written whole
(api/client_writer.write_whole): one bytes object instead of six pairs to build, walk and join ---- */

#define BLOCK_MAX 1024  /* six lines of at most 30 (name) + 2 + 63 (value: 20 digits, a duration under 64) + 2 */

static char *put_line(char *p, PyObject *name, const char *v, Py_ssize_t n) {
    Py_ssize_t k = PyBytes_GET_SIZE(name);
    memcpy(p, PyBytes_AS_STRING(name), k);
    p += k;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, v, n);
    p += n;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

static char *put_pair(char *p, PyObject *pair) {
    PyObject *v = PyTuple_GET_ITEM(pair, 1);
    return put_line(p, PyTuple_GET_ITEM(pair, 0), PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
}

static char *block_trio(Adm *a, char *p, int which, int64_t limit, int64_t remaining, double reset, Py_ssize_t ei) {
    PyObject *lim, *rst;
    char digits[24];
    Py_ssize_t n = digits_of(remaining > 0 ? remaining : 0, digits + sizeof digits);
    if (trio_ends(a, which, limit, reset, ei, &lim, &rst) < 0) return NULL;
    p = put_pair(p, lim);
    p = put_line(p, NAMES[which * 3 + 1], digits + sizeof digits - n, n);
    return put_pair(p, rst);
}

static PyObject *adm_block(Adm *a, PyObject *Py_UNUSED(ignored)) {
    char buf[BLOCK_MAX], *p = buf;
    if (a->gen != a->store->gen) return PyBytes_FromStringAndSize(NULL, 0);  /* the store was closed */
    if ((a->has_r && (p = block_trio(a, p, 0, a->rl, a->rr, a->rs, a->ri)) == NULL)
            || (a->has_t && (p = block_trio(a, p, 1, a->tl, a->tr, a->ts, a->ti)) == NULL))
        return NULL;
    return PyBytes_FromStringAndSize(buf, p - buf);
}

static PyObject *adm_info(Adm *a, int which) {
    return which ? rateinfo(a->store, a->has_t, a->tl, a->tr, a->ts) : rateinfo(a->store, a->has_r, a->rl, a->rr, a->rs);
}
static PyObject *adm_requests(Adm *a, void *c) { return adm_info(a, 0); }
static PyObject *adm_tokens(Adm *a, void *c) { return adm_info(a, 1); }
static PyObject *adm_true(Adm *a, void *c) { Py_RETURN_TRUE; }
static PyObject *adm_false(Adm *a, void *c) { Py_RETURN_FALSE; }
static PyObject *adm_none(Adm *a, void *c) { Py_RETURN_NONE; }
static PyObject *adm_zero(Adm *a, void *c) { return PyFloat_FromDouble(0.0); }
static PyObject *adm_settled(Adm *a, void *c) { return PyBool_FromLong(a->settled); }
static PyObject *adm_released(Adm *a, void *c) { return PyBool_FromLong(a->released); }
static PyObject *adm_token(Adm *a, void *c) { return PyLong_FromLongLong(a->token); }
static PyObject *adm_estimate(Adm *a, void *c) { return PyLong_FromLongLong(a->estimate); }
static PyObject *adm_day(Adm *a, void *c) { return PyLong_FromLongLong(a->day); }
static PyObject *adm_month(Adm *a, void *c) { return PyLong_FromLongLong(a->month); }
static PyObject *adm_rid(Adm *a, void *c) { Py_INCREF(a->request_id); return a->request_id; }
static PyObject *adm_started(Adm *a, void *c) { return PyFloat_FromDouble(a->started); }
static int adm_set_started(Adm *a, PyObject *v, void *c) {
    double d = v ? PyFloat_AsDouble(v) : -1.0;
    if (v == NULL) { PyErr_SetString(PyExc_AttributeError, "cannot delete started"); return -1; }
    if (d == -1.0 && PyErr_Occurred()) return -1;
    a->started = d;
    return 0;
}

static PyGetSetDef adm_getset[] = {
    {"allowed", (getter)adm_true}, {"degraded", (getter)adm_false}, {"exceeds_limit", (getter)adm_false},
    {"limit_name", (getter)adm_none}, {"subject_id", (getter)adm_none}, {"retry_after", (getter)adm_zero},
    {"requests", (getter)adm_requests}, {"tokens", (getter)adm_tokens}, {"token", (getter)adm_token},
    {"estimate", (getter)adm_estimate}, {"day", (getter)adm_day}, {"month", (getter)adm_month},
    {"request_id", (getter)adm_rid}, {"settled", (getter)adm_settled}, {"released", (getter)adm_released},
    {"started", (getter)adm_started, (setter)adm_set_started},
    {NULL},
};

static PyMethodDef adm_methods[] = {
    {"headers", (PyCFunction)adm_headers, METH_NOARGS, "The x-ratelimit-* headers: [(name, value)] as bytes."},
    {"block", (PyCFunction)adm_block, METH_NOARGS, "The same headers as HTTP/1.1 lines: b'name: value\\r\\n' each."},
    {NULL},
};

static void adm_dealloc(Adm *a) {
    Py_DECREF(a->store);
    Py_DECREF(a->request_id);
    PyObject_Free(a);
}

static PyTypeObject AdmType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.auth._admission.Admission",
    .tp_basicsize = sizeof(Adm),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An admitted request (refusals are limits.Admission objects).",
    .tp_dealloc = (destructor)adm_dealloc,
    .tp_getset = adm_getset,
    .tp_methods = adm_methods,
};

