/* The plans of gateway/auth/_admission.c (an identity's distinct subjects and their limits, made once at start),
their states' inspection for tests, and forgetting them all. Included by _admission.c after its structures. */

/* ---- plans: an identity's distinct subjects and their limits ---- */

static int lim_of(PyObject *o, int64_t *out) {
    if (o == Py_None) { *out = -1; return 0; }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0) { PyErr_SetString(PyExc_ValueError, "a limit is >= 0"); return -1; }
    *out = v;
    return 0;
}

static PyObject *store_plan(Store *s, PyObject *arg) {  /* [(subject id, rpm, tpm, concurrency, tpd, tpmo)] -> number */
    PyObject *seq = PySequence_Fast(arg, "plan(list of subjects)");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Entry *e = PyMem_Calloc(n ? n : 1, sizeof(Entry));
    if (e == NULL) { Py_DECREF(seq); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sid, *v[5];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "UOOOOO", &sid, &v[0], &v[1], &v[2], &v[3], &v[4]))
            goto fail;
        if (lim_of(v[0], &e[i].lim.rpm) || lim_of(v[1], &e[i].lim.tpm) || lim_of(v[2], &e[i].lim.conc)
                || lim_of(v[3], &e[i].lim.tpd) || lim_of(v[4], &e[i].lim.tpmo))
            goto fail;
        PyObject *num = PyDict_GetItemWithError(s->index, sid);
        if (num == NULL) {
            if (PyErr_Occurred()) goto fail;
            if (s->nst == s->capst) {
                Py_ssize_t cap = s->capst ? s->capst * 2 : 8;
                State **ns = PyMem_Realloc(s->states, cap * sizeof(State *));
                if (ns == NULL) { PyErr_NoMemory(); goto fail; }
                s->states = ns; s->capst = cap;
            }
            State *st = state_new();
            if (st == NULL) { PyErr_NoMemory(); goto fail; }
            num = PyLong_FromSsize_t(s->nst);
            if (num == NULL || PyDict_SetItem(s->index, sid, num) < 0) { Py_XDECREF(num); state_free(st); goto fail; }
            Py_DECREF(num);
            s->states[s->nst++] = st;
            e[i].st = s->nst - 1;
        } else {
            e[i].st = PyLong_AsSsize_t(num);
        }
        Py_INCREF(sid); e[i].sid = sid;
    }
    if (s->npl == s->cappl) {
        Py_ssize_t cap = s->cappl ? s->cappl * 2 : 8;
        Plan *np = PyMem_Realloc(s->plans, cap * sizeof(Plan));
        if (np == NULL) { PyErr_NoMemory(); goto fail; }
        s->plans = np; s->cappl = cap;
    }
    s->plans[s->npl].n = n; s->plans[s->npl].e = e;
    Py_DECREF(seq);
    return PyLong_FromSsize_t(s->npl++);
fail:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(e[i].sid);
    PyMem_Free(e);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *store_inspect(Store *s, PyObject *sid) {  /* a subject's counters, for tests and inspection */
    PyObject *num = PyDict_GetItemWithError(s->index, sid);
    if (num == NULL) { if (PyErr_Occurred()) return NULL; Py_RETURN_NONE; }
    State *st = s->states[PyLong_AsSsize_t(num)];
    PyObject *times = PyList_New(0), *amounts = PyList_New(0), *leases = PyDict_New(), *quota = PyDict_New();
    if (!times || !amounts || !leases || !quota) goto fail;
    for (Py_ssize_t i = st->head; i < st->len; i++) {
        PyObject *t = PyFloat_FromDouble(st->t[i]), *a = PyLong_FromLongLong(st->a[i]);
        int bad = !t || !a || PyList_Append(times, t) < 0 || PyList_Append(amounts, a) < 0;
        Py_XDECREF(t); Py_XDECREF(a);
        if (bad) goto fail;
    }
    for (Py_ssize_t i = 0; i < st->lcap; i++) {
        if (!st->lk[i]) continue;
        PyObject *k = PyLong_FromLongLong(st->lk[i]), *v = PyFloat_FromDouble(st->le[i]);
        int bad = !k || !v || PyDict_SetItem(leases, k, v) < 0;
        Py_XDECREF(k); Py_XDECREF(v);
        if (bad) goto fail;
    }
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < 2; i++) {
            if (st->qid[p][i] == NONE_ID) continue;
            PyObject *k = Py_BuildValue("(sL)", p ? "m" : "d", (long long)st->qid[p][i]);
            PyObject *v = PyLong_FromLongLong(st->qv[p][i]);
            int bad = !k || !v || PyDict_SetItem(quota, k, v) < 0;
            Py_XDECREF(k); Py_XDECREF(v);
            if (bad) goto fail;
        }
    return Py_BuildValue("{sNsNsLsNsN}", "times", times, "amounts", amounts, "tokens", (long long)st->tokens,
                         "leases", leases, "quota", quota);
fail:
    Py_XDECREF(times); Py_XDECREF(amounts); Py_XDECREF(leases); Py_XDECREF(quota);
    return NULL;
}

static void store_clear_states(Store *s) {
    for (Py_ssize_t k = 0; k < s->nst; k++) state_free(s->states[k]);
    s->nst = 0;
    for (Py_ssize_t k = 0; k < s->npl; k++) {
        for (Py_ssize_t i = 0; i < s->plans[k].n; i++) {
            Py_XDECREF(s->plans[k].e[i].sid); Py_XDECREF(s->plans[k].e[i].rlim); Py_XDECREF(s->plans[k].e[i].tlim);
        }
        PyMem_Free(s->plans[k].e);
    }
    s->npl = 0;
    if (s->index) PyDict_Clear(s->index);
}
