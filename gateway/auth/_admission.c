/* The in-memory limits of gateway/auth/limits_memory.py in C; gateway/auth/limits_native.py wraps it.

Same semantics call for call: tests/test_limits.py runs against both stores and tests/test_limits_native.py
drives them with the same random operations and compares every answer and every counter. Why C: a limited
request ran ~20 Python objects through the store in the middle of ~100 us of other work, each one a cache
miss, 13 us per request in the gateway (bench/RESULTS.md); here it is a few contiguous arrays.

A subject's state: the window (admission time, tpm charge and admission number per admitted request, from
`head` on), its concurrency leases (open addressing on the admission number), and its day and month quota
counters (the current period and the one before, which a late settle still goes to). A plan is one
identity's subjects (key, team) with their limits, made once; `acquire` takes a plan number. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_admission_state.h"

typedef struct { Py_ssize_t st; Lim lim; PyObject *sid, *rlim, *tlim; } Entry;
typedef struct { Py_ssize_t n; Entry *e; } Plan;

typedef struct {
    PyObject_HEAD
    State **states; Py_ssize_t nst, capst;
    PyObject *index;  /* subject id -> state number */
    Plan *plans; Py_ssize_t npl, cappl;
    double window, ttl;
    PyObject *clock, *rateinfo;  /* clock: None for the system's real-time clock (what time.time reads) */
    int64_t seq, day, month; double month_end;
    int64_t reset_ms[2]; PyObject *reset_hdr[2];  /* the last reset header of each trio, kept */
    int64_t gen;  /* clear() starts a new generation: older admissions then touch nothing */
    int64_t completion;  /* admit(): the completion tokens a request that names none is estimated at */
} Store;

typedef struct {
    PyObject_HEAD
    Store *store; Py_ssize_t plan;
    int64_t gen, token, estimate, day, month;
    char settled, released, has_r, has_t;
    double started;
    PyObject *request_id;
    int64_t rl, rr, tl, tr; double rs, ts;  /* the tightest rpm and tpm trio: limit, remaining, reset */
    Py_ssize_t ri, ti;  /* the plan entries they come from (their limit headers are kept there) */
} Adm;

static PyTypeObject StoreType, AdmType;
static PyObject *NAMES[6];  /* x-ratelimit-{limit,remaining,reset}-{requests,tokens} */

/* ---- time ---- */

static int now_of(Store *s, double *now) {
    if (s->clock == Py_None) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        *now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        return 0;
    }
    PyObject *r = PyObject_CallNoArgs(s->clock);
    if (r == NULL) return -1;
    *now = PyFloat_AsDouble(r);
    Py_DECREF(r);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* ---- the checks, and a refusal's exact reading where one fails (limits_memory.py's _check and worst) ---- */

typedef struct { const char *name; Py_ssize_t entry; double retry; int exceeds; } Refusal;

static void worse(Refusal *bad, const char *name, Py_ssize_t entry, double retry, int exceeds) {
    if (bad->name == NULL || exceeds > bad->exceeds || (exceeds == bad->exceeds && retry > bad->retry)) {
        bad->name = name; bad->entry = entry; bad->retry = retry; bad->exceeds = exceeds;
    }
}

static void check(Store *s, Entry *e, Py_ssize_t ei, State *st, int64_t est, double now, Refusal *bad) {
    Lim *l = &e->lim;
    if (l->rpm >= 0 && st->len - st->head >= l->rpm)
        worse(bad, "rpm", ei, l->rpm ? st->t[st->len - l->rpm] + s->window - now : s->window, l->rpm == 0);
    if (l->tpm >= 0 && st->tokens + est > l->tpm) {
        double retry = s->window;
        int64_t freed = 0;
        if (est <= l->tpm)
            for (Py_ssize_t i = st->head; i < st->len; i++) {  /* the oldest entries leave first */
                freed += st->a[i];
                if (st->tokens - freed + est <= l->tpm) { retry = st->t[i] + s->window - now; break; }
            }
        worse(bad, "tpm", ei, retry, est > l->tpm);
    }
    if (l->conc >= 0 && st->ln >= l->conc) {
        double soonest = now + 1.0, r;
        int any = 0;
        for (Py_ssize_t i = 0; i < st->lcap; i++)
            if (st->lk[i] && (!any || st->le[i] < soonest)) { soonest = st->le[i]; any = 1; }
        r = soonest - now;
        worse(bad, "concurrency", ei, r < 1.0 ? r : 1.0, l->conc == 0);
    }
    if (l->tpd >= 0 && quota_get(st, 0, s->day) + est > l->tpd)
        worse(bad, "tokens_per_day", ei, (double)(s->day + 1) * DAY - now, est > l->tpd);
    if (l->tpmo >= 0 && quota_get(st, 1, s->month) + est > l->tpmo)
        worse(bad, "tokens_per_month", ei, s->month_end - now, est > l->tpmo);
}

static PyObject *rateinfo(Store *s, int has, int64_t limit, int64_t remaining, double reset) {
    if (!has) Py_RETURN_NONE;
    return PyObject_CallFunction(s->rateinfo, "LLd", (long long)limit, (long long)remaining, reset);
}

/* ---- acquire: every subject admits and is charged, or none is ---- */

/* An estimate past int64 is held as BIG: over every limit (all are <= 2**53, settings), so refused wherever
   tokens are limited, as the exact number would be, and far from overflowing a sum where they are not. */
#define BIG (MAX_CHARGE * 4)

static PyObject *acquire(Store *s, Py_ssize_t pn, int64_t est, PyObject *rid) {
    if (pn < 0 || pn >= s->npl) { PyErr_SetString(PyExc_IndexError, "no such plan"); return NULL; }
    double now;
    if (now_of(s, &now) < 0) return NULL;
    if (est < 0) est = 0;
    if (day_of(now) != s->day) calendar(now, &s->day, &s->month, &s->month_end);
    Plan *p = &s->plans[pn];
    double cut = now - s->window;
    Refusal bad = {NULL, -1, 0.0, 0};
    for (Py_ssize_t i = 0; i < p->n; i++) {
        Entry *e = &p->e[i];
        State *st = s->states[e->st];
        if (st->len > st->head && st->t[st->head] <= cut) prune(st, cut);
        if (st->next_expiry <= now && st->ln) lease_sweep(st, now);
        check(s, e, i, st, est, now, &bad);  /* five comparisons; the refusal's reading only where one fails */
    }
    int64_t token = ++s->seq;
    int has_r = 0, has_t = 0;
    Py_ssize_t ri = -1, ti = -1;
    int64_t rl = 0, rr = 0, tl = 0, tr = 0;
    double rs = 0.0, ts = 0.0;
    for (Py_ssize_t i = 0; i < p->n; i++) {
        Entry *e = &p->e[i];
        State *st = s->states[e->st];
        Lim *l = &e->lim;
        if (bad.name == NULL) {
            if (l->rpm >= 0 || l->tpm >= 0) {
                int64_t amount = l->tpm >= 0 ? est : 0;
                if (window_append(st, now, amount, token) < 0) return NULL;
                st->tokens += amount;
            }
            if (l->conc >= 0) {
                double expiry = now + s->ttl;
                if (lease_put(st, token, expiry) < 0) return NULL;
                if (expiry < st->next_expiry) st->next_expiry = expiry;
            }
            if (l->tpd >= 0) quota_charge(st, 0, s->day, est);
            if (l->tpmo >= 0) quota_charge(st, 1, s->month, est);
        }
        double reset = st->len > st->head ? st->t[st->len - 1] + s->window - now : 0.0;
        if (l->rpm >= 0) {
            int64_t rem = l->rpm - (st->len - st->head);
            if (!has_r || rem < rr) { has_r = 1; rl = l->rpm; rr = rem; rs = reset; ri = i; }
        }
        if (l->tpm >= 0) {
            int64_t rem = l->tpm - st->tokens;
            if (!has_t || rem < tr) { has_t = 1; tl = l->tpm; tr = rem; ts = reset; ti = i; }
        }
    }
    if (bad.name != NULL) {  /* (limit, subject id, retry, exceeds, token, day, month, requests, tokens) */
        PyObject *ri = rateinfo(s, has_r, rl, rr, rs), *ti = ri ? rateinfo(s, has_t, tl, tr, ts) : NULL;
        if (ti == NULL) { Py_XDECREF(ri); return NULL; }
        return Py_BuildValue("sOdOLLLNN", bad.name, p->e[bad.entry].sid, bad.retry > 0 ? bad.retry : 0.0,
                             bad.exceeds ? Py_True : Py_False, (long long)token, (long long)s->day,
                             (long long)s->month, ri, ti);
    }
    Adm *a = PyObject_New(Adm, &AdmType);
    if (a == NULL) return NULL;
    Py_INCREF(s); a->store = s; a->plan = pn; a->gen = s->gen;
    a->token = token; a->estimate = est; a->day = s->day; a->month = s->month;
    a->settled = a->released = 0; a->has_r = (char)has_r; a->has_t = (char)has_t;
    a->started = 0.0;
    Py_INCREF(rid); a->request_id = rid;
    a->rl = rl; a->rr = rr; a->rs = rs; a->tl = tl; a->tr = tr; a->ts = ts;
    a->ri = ri; a->ti = ti;
    return (PyObject *)a;
}

static int64_t int_of(PyObject *o, int *ok) {  /* an int (not a bool) as int64, saturated at BIG; ok = 0 if not an int */
    int overflow;
    long long v;
    if (o == NULL || !PyLong_CheckExact(o)) { *ok = 0; return 0; }
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    *ok = 1;
    return overflow ? (overflow > 0 ? BIG : -1) : (v > BIG ? BIG : v);
}

static PyObject *store_acquire(Store *s, PyObject *const *args, Py_ssize_t nargs) {
    int ok;
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "acquire(plan, estimate, request_id)"); return NULL; }
    Py_ssize_t pn = PyLong_AsSsize_t(args[0]);
    if (pn == -1 && PyErr_Occurred()) return NULL;
    int64_t est = int_of(args[1], &ok);
    if (!ok) { PyErr_SetString(PyExc_TypeError, "the estimate is an int"); return NULL; }
    return acquire(s, pn, est, args[2]);
}

static PyObject *FIELDS[4];  /* max_tokens, max_completion_tokens, max_output_tokens, n */

/* admit(plan, body, body_length, request_id): acquire with enforce.py's Gatekeeper.estimate made here: the
   body's length / 4, plus the first positive max-tokens field (else the store's default) times n. */
static PyObject *store_admit(Store *s, PyObject *const *args, Py_ssize_t nargs) {
    int ok;
    if (nargs != 4 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "admit(plan, body dict, body_length, request_id)");
        return NULL;
    }
    Py_ssize_t pn = PyLong_AsSsize_t(args[0]), len = PyLong_AsSsize_t(args[2]);
    if ((pn == -1 || len == -1) && PyErr_Occurred()) return NULL;
    int64_t completion = s->completion, n, est;
    for (int i = 0; i < 3; i++) {
        int64_t v = int_of(PyDict_GetItemWithError(args[1], FIELDS[i]), &ok);
        if (ok && v > 0) { completion = v; break; }
        if (PyErr_Occurred()) return NULL;
    }
    n = int_of(PyDict_GetItemWithError(args[1], FIELDS[3]), &ok);
    if (PyErr_Occurred()) return NULL;
    n = ok && n > 1 ? n : 1;
    est = len / 4 + (completion > BIG / n ? BIG : completion * n);
    return acquire(s, pn, est > BIG ? BIG : est, args[3]);
}

/* ---- finish: settle the charge to real usage and release the leases, each at most once ---- */

static PyObject *store_finish(Store *s, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || Py_TYPE(args[0]) != &AdmType) {
        PyErr_SetString(PyExc_TypeError, "finish(admission, used_tokens, settle, release)");
        return NULL;
    }
    Adm *a = (Adm *)args[0];
    int overflow, settle = PyObject_IsTrue(args[2]), release = PyObject_IsTrue(args[3]);
    long long used = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (settle < 0 || release < 0 || (used == -1 && !overflow && PyErr_Occurred())) return NULL;
    if (a->store != s) { PyErr_SetString(PyExc_ValueError, "an admission of another store"); return NULL; }
    if (overflow) used = overflow > 0 ? MAX_CHARGE : 0;
    if (a->gen != s->gen) Py_RETURN_NONE;  /* admitted before clear() */
    settle = settle && !a->settled;
    release = release && !a->released;
    if (settle) a->settled = 1;
    if (release) a->released = 1;
    /* a backend's report is not trusted to fit an int64 charge: no limit is above 2**53 (settings) */
    int64_t delta = settle ? (used > 0 ? (used < MAX_CHARGE ? used : MAX_CHARGE) : 0) - a->estimate : 0;
    Plan *p = &s->plans[a->plan];
    for (Py_ssize_t i = 0; i < p->n; i++) {
        State *st = s->states[p->e[i].st];
        if (delta) {
            if (p->e[i].lim.tpm >= 0) {  /* not found: it left the window, which holds only what was admitted in it */
                Py_ssize_t j = window_find(st, a->token);
                if (j >= 0) { st->a[j] += delta; st->tokens += delta; }
            }
            quota_add(st, 0, a->day, delta);
            quota_add(st, 1, a->month, delta);
        }
        if (release && st->ln) lease_del(st, a->token);
    }
    Py_RETURN_NONE;
}

static PyObject *store_refresh(Store *s, PyObject *arg) {  /* extend by a TTL; False if one had expired */
    if (Py_TYPE(arg) != &AdmType || ((Adm *)arg)->store != s) {
        PyErr_SetString(PyExc_TypeError, "refresh(admission of this store)");
        return NULL;
    }
    Adm *a = (Adm *)arg;
    double now;
    int ok = 1;
    if (a->released || a->gen != s->gen) Py_RETURN_FALSE;
    if (now_of(s, &now) < 0) return NULL;
    Plan *p = &s->plans[a->plan];
    for (Py_ssize_t i = 0; i < p->n; i++) {
        if (p->e[i].lim.conc < 0) continue;
        State *st = s->states[p->e[i].st];
        double *e = lease_get(st, a->token);
        if (e != NULL && *e > now) *e = now + s->ttl;  /* next_expiry stays a lower bound */
        else { lease_del(st, a->token); ok = 0; }
    }
    return PyBool_FromLong(ok);
}

static PyObject *store_refresh_held(Store *s, PyObject *arg) {
    double older = PyFloat_AsDouble(arg), now;
    if ((older == -1.0 && PyErr_Occurred()) || now_of(s, &now) < 0) return NULL;
    double due = now + s->ttl - older;
    for (Py_ssize_t k = 0; k < s->nst; k++) {
        State *st = s->states[k];
        for (Py_ssize_t i = 0; i < st->lcap; i++)
            if (st->lk[i] && now < st->le[i] && st->le[i] < due) st->le[i] = now + s->ttl;
    }
    Py_RETURN_NONE;
}

#include "_admission_plan.h"

#include "_admission_adm.h"

/* ---- the store ---- */

static PyObject *store_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"window", "lease_ttl", "clock", "rateinfo", "completion", NULL};
    double window, ttl;
    PyObject *clock, *ri;
    long long completion = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ddOO|L", names, &window, &ttl, &clock, &ri, &completion)) return NULL;
    Store *s = (Store *)type->tp_alloc(type, 0);
    if (s == NULL) return NULL;
    s->index = PyDict_New();
    if (s->index == NULL) { Py_DECREF(s); return NULL; }
    s->window = window; s->ttl = ttl;
    Py_INCREF(clock); s->clock = clock;
    Py_INCREF(ri); s->rateinfo = ri;
    s->day = s->month = NONE_ID;
    s->completion = completion < 0 ? 0 : completion > BIG ? BIG : completion;
    return (PyObject *)s;
}

static PyObject *store_subject_ids(Store *s, PyObject *Py_UNUSED(ignored)) {
    return PyDict_Keys(s->index);
}

static PyObject *store_clear(Store *s, PyObject *Py_UNUSED(ignored)) {
    store_clear_states(s);
    s->gen++;
    Py_RETURN_NONE;
}

static void store_dealloc(Store *s) {
    store_clear_states(s);
    PyMem_Free(s->states); PyMem_Free(s->plans);
    Py_XDECREF(s->index); Py_XDECREF(s->clock); Py_XDECREF(s->rateinfo);
    Py_XDECREF(s->reset_hdr[0]); Py_XDECREF(s->reset_hdr[1]);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef store_methods[] = {
    {"plan", (PyCFunction)store_plan, METH_O, "plan([(id, rpm, tpm, concurrency, tpd, tpmo)]) -> plan number"},
    {"acquire", (PyCFunction)(void (*)(void))store_acquire, METH_FASTCALL,
     "acquire(plan, estimate, request_id) -> Admission, or a refusal's tuple"},
    {"admit", (PyCFunction)(void (*)(void))store_admit, METH_FASTCALL,
     "admit(plan, body, body_length, request_id): acquire with the request's estimate made from its body"},
    {"finish", (PyCFunction)(void (*)(void))store_finish, METH_FASTCALL,
     "finish(admission, used_tokens, settle, release)"},
    {"refresh", (PyCFunction)store_refresh, METH_O, "refresh(admission) -> False if a lease had expired"},
    {"refresh_held", (PyCFunction)store_refresh_held, METH_O, "refresh_held(older_than)"},
    {"inspect", (PyCFunction)store_inspect, METH_O, "inspect(subject_id) -> its counters, or None"},
    {"subject_ids", (PyCFunction)store_subject_ids, METH_NOARGS, "the ids of every subject with counters"},
    {"clear", (PyCFunction)store_clear, METH_NOARGS, "forget every subject and plan"},
    {NULL},
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.auth._admission.Store",
    .tp_basicsize = sizeof(Store),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Store(window, lease_ttl, clock, rateinfo): the limits of one process.",
    .tp_new = store_new,
    .tp_dealloc = (destructor)store_dealloc,
    .tp_methods = store_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_admission", "Exact per-key limits in C.", -1, NULL};

PyMODINIT_FUNC PyInit__admission(void) {
    static const char *names[6] = {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                                   "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                                   "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"};
    if (PyType_Ready(&StoreType) < 0 || PyType_Ready(&AdmType) < 0) return NULL;
    static const char *fields[4] = {"max_tokens", "max_completion_tokens", "max_output_tokens", "n"};
    for (int i = 0; i < 6; i++)
        if (NAMES[i] == NULL && (NAMES[i] = PyBytes_FromString(names[i])) == NULL) return NULL;
    for (int i = 0; i < 4; i++)
        if (FIELDS[i] == NULL && (FIELDS[i] = PyUnicode_InternFromString(fields[i])) == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0
            || PyModule_AddObjectRef(m, "Admission", (PyObject *)&AdmType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

