/* A subject's counters for gateway/auth/_admission.c: plain C, no Python objects (see that file's comment).

The window: admission time, tpm charge and admission number of each admitted request, in admission (== time)
order from `head` on, in three arrays. The leases: open addressing on the admission number, deleted by shifting
back (no tombstones). The quotas: per day and per month, the current period and the one before (a late settle
still goes there, as in limits_memory.py). And the UTC calendar, as limits.periods reads it. */

#define DAY 86400.0
#define MAX_CHARGE (INT64_C(1) << 53)
#define NONE_ID INT64_MIN

typedef struct { int64_t rpm, tpm, conc, tpd, tpmo; } Lim;  /* -1: no such limit */

typedef struct {
    double *t; int64_t *a, *seq;
    Py_ssize_t head, len, cap;
    int64_t tokens;
    int64_t *lk; double *le;  /* leases: admission number (0 = empty slot) -> expiry */
    Py_ssize_t lcap, ln;
    double next_expiry;
    int64_t qid[2][2], qv[2][2];  /* [day, month][two periods] */
} State;


/* ---- the calendar ---- */

static int64_t day_of(double now) {  /* int(now // DAY), as CPython's float floor division computes it */
    double mod = fmod(now, DAY), div = (now - mod) / DAY, fl;
    if (mod != 0.0 && mod < 0) div -= 1.0;
    fl = floor(div);
    if (div - fl > 0.5) fl += 1.0;
    return (int64_t)fl;
}

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {  /* H. Hinnant's algorithms */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400, yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

static void calendar(double now, int64_t *day, int64_t *month, double *month_end) {  /* limits.periods */
    int64_t z = day_of(now) + 719468, era = (z >= 0 ? z : z - 146096) / 146097, doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365, doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
    *day = day_of(now);
    *month = y * 12 + m - 1;
    *month_end = (double)days_from_civil(y + (m == 12), m % 12 + 1, 1) * DAY;
}

/* ---- a subject's state ---- */

static State *state_new(void) {
    State *st = PyMem_Calloc(1, sizeof(State));
    if (st == NULL) return NULL;
    st->next_expiry = INFINITY;
    for (int p = 0; p < 2; p++) st->qid[p][0] = st->qid[p][1] = NONE_ID;
    return st;
}

static void state_free(State *st) {
    PyMem_Free(st->t); PyMem_Free(st->a); PyMem_Free(st->seq); PyMem_Free(st->lk); PyMem_Free(st->le);
    PyMem_Free(st);
}

static void prune(State *st, double cut) {
    Py_ssize_t i = st->head, n = st->len;
    while (i < n && st->t[i] <= cut) st->tokens -= st->a[i++];
    if (i > 1024 && i * 2 > n) {  /* cut off what left, in one move, once it is the larger part */
        memmove(st->t, st->t + i, (n - i) * sizeof(double));
        memmove(st->a, st->a + i, (n - i) * sizeof(int64_t));
        memmove(st->seq, st->seq + i, (n - i) * sizeof(int64_t));
        st->len = n - i;
        i = 0;
    }
    st->head = i;
}

static int window_append(State *st, double t, int64_t a, int64_t seq) {
    if (st->len == st->cap) {
        Py_ssize_t cap = st->cap ? st->cap * 2 : 64;
        double *nt = PyMem_Realloc(st->t, cap * sizeof(double));
        if (nt) st->t = nt;
        int64_t *na = nt ? PyMem_Realloc(st->a, cap * sizeof(int64_t)) : NULL;
        if (na) st->a = na;
        int64_t *ns = na ? PyMem_Realloc(st->seq, cap * sizeof(int64_t)) : NULL;
        if (ns == NULL) { PyErr_NoMemory(); return -1; }
        st->seq = ns;
        st->cap = cap;
    }
    st->t[st->len] = t; st->a[st->len] = a; st->seq[st->len] = seq;
    st->len++;
    return 0;
}

/* Galloping back from the newest: an in-flight request is near it, and the oldest entry (a minute of requests
   away, out of every cache) is read only when the search gets there. */
static Py_ssize_t window_find(State *st, int64_t seq) {
    Py_ssize_t hi = st->len - 1, lo, step = 1;
    if (hi < st->head || st->seq[hi] < seq) return -1;
    while (hi - step >= st->head && st->seq[hi - step] > seq) { hi -= step; step *= 2; }
    lo = hi - step < st->head ? st->head : hi - step;
    while (lo < hi) {  /* seq[lo..hi]: the first >= seq */
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (st->seq[mid] < seq) lo = mid + 1; else hi = mid;
    }
    return st->seq[lo] == seq ? lo : -1;
}

static inline size_t slot_of(int64_t k, Py_ssize_t cap) {
    return (size_t)(((uint64_t)k * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (size_t)(cap - 1);
}

static int lease_put(State *st, int64_t k, double e);

static int lease_grow(State *st, Py_ssize_t cap) {
    int64_t *ok = st->lk; double *oe = st->le; Py_ssize_t ocap = st->lcap;
    int64_t *nk = PyMem_Calloc(cap, sizeof(int64_t));
    double *ne = PyMem_Calloc(cap, sizeof(double));
    if (nk == NULL || ne == NULL) { PyMem_Free(nk); PyMem_Free(ne); PyErr_NoMemory(); return -1; }
    st->lk = nk; st->le = ne; st->lcap = cap; st->ln = 0;
    for (Py_ssize_t i = 0; i < ocap; i++) if (ok[i]) lease_put(st, ok[i], oe[i]);
    PyMem_Free(ok); PyMem_Free(oe);
    return 0;
}

static int lease_put(State *st, int64_t k, double e) {  /* insert or overwrite */
    if ((st->ln + 1) * 2 > st->lcap && lease_grow(st, st->lcap ? st->lcap * 2 : 16) < 0) return -1;
    size_t i = slot_of(k, st->lcap);
    while (st->lk[i] && st->lk[i] != k) i = (i + 1) & (size_t)(st->lcap - 1);
    if (!st->lk[i]) st->ln++;
    st->lk[i] = k; st->le[i] = e;
    return 0;
}

static double *lease_get(State *st, int64_t k) {
    if (!st->ln) return NULL;
    size_t i = slot_of(k, st->lcap);
    while (st->lk[i]) {
        if (st->lk[i] == k) return &st->le[i];
        i = (i + 1) & (size_t)(st->lcap - 1);
    }
    return NULL;
}

static void lease_del(State *st, int64_t k) {  /* backward-shift deletion: no tombstones */
    double *p = lease_get(st, k);
    if (p == NULL) return;
    size_t mask = (size_t)(st->lcap - 1), i = (size_t)(p - st->le), j = i;
    st->lk[i] = 0; st->ln--;
    for (;;) {
        j = (j + 1) & mask;
        if (!st->lk[j]) return;
        size_t home = slot_of(st->lk[j], st->lcap);
        if (((j - home) & mask) >= ((j - i) & mask)) {  /* j's home is not in (i, j]: move it to i */
            st->lk[i] = st->lk[j]; st->le[i] = st->le[j]; st->lk[j] = 0; i = j;
        }
    }
}

static void lease_sweep(State *st, double now) {  /* drop the expired ones: only a lost lease expires */
    double soonest = INFINITY;
    for (Py_ssize_t i = 0; i < st->lcap;) {
        if (st->lk[i] && st->le[i] <= now) { lease_del(st, st->lk[i]); continue; }  /* a shifted one may land at i */
        if (st->lk[i] && st->le[i] < soonest) soonest = st->le[i];
        i++;
    }
    st->next_expiry = soonest;
}

static int64_t quota_get(State *st, int p, int64_t id) {
    return st->qid[p][0] == id ? st->qv[p][0] : st->qid[p][1] == id ? st->qv[p][1] : 0;
}

static void quota_add(State *st, int p, int64_t id, int64_t v) {  /* to a period already charged, else nothing */
    for (int i = 0; i < 2; i++) if (st->qid[p][i] == id) { st->qv[p][i] += v; return; }
}

static void quota_charge(State *st, int p, int64_t id, int64_t v) {
    for (int i = 0; i < 2; i++) if (st->qid[p][i] == id) { st->qv[p][i] += v; return; }
    for (int i = 0; i < 2; i++) if (st->qid[p][i] != NONE_ID && st->qid[p][i] < id - 1) st->qid[p][i] = NONE_ID;
    int i = st->qid[p][0] == NONE_ID ? 0 : st->qid[p][1] == NONE_ID ? 1 : (st->qid[p][0] < st->qid[p][1] ? 0 : 1);
    st->qid[p][i] = id; st->qv[p][i] = v;
}
