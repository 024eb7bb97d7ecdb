/* salnp._core: network programs (sal/net.h), training and exported alike, and their
 * accounting (sal/count.h).  An engine is a capsule owning the C object. */
#include "binding.h"

#include <string.h>

#define NET_CAPSULE "salnp._core.net"

static void net_capsule_free(PyObject *cap) {
    sal_net_free((sal_net *)PyCapsule_GetPointer(cap, NET_CAPSULE));
}

/* the engine inside cap, made by maker; TypeError otherwise */
static void *engine_of(PyObject *cap, const char *name, const char *maker, const char *fn) {
    if (!PyCapsule_IsValid(cap, name)) {
        PyErr_Format(PyExc_TypeError, "%s: net must be an engine made by %s", fn, maker);
        return NULL;
    }
    return PyCapsule_GetPointer(cap, name);
}

/* n program tables: int64/int32 2-D arrays (NPY_ARRAY_IN_ARRAY) whose column counts must
 * be cols[k]; what describes them all for the error ("shapes (B, 3), ops (n, 11) ..."). */
static int program_tables(PyArrayObject **out, PyObject **in, const int *types, const int *cols,
                          int n, const char *fn, const char *what) {
    int ok = 1;
    for (int k = 0; k < n; k++) {
        out[k] = (PyArrayObject *)PyArray_FROMANY(in[k], types[k], 2, 2, NPY_ARRAY_IN_ARRAY);
        if (!out[k]) return -1;
        ok = ok && PyArray_DIM(out[k], 1) == cols[k];
    }
    if (ok) return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s expected", fn, what);
    return -1;
}

/* y (N, width) from x (N, C, H, W) float32: the shared part of both forwards */
static PyArrayObject *logits_for(PyArrayObject *x, int64_t width, sal_act *xg) {
    *xg = act_nchw(x);
    npy_intp dims[2] = {PyArray_DIM(x, 0), (npy_intp)width};
    return new_empty(2, dims, NPY_FLOAT32);
}

/* ---- training programs ------------------------------------------------------------- */

static int check_arena_sizes(const sal_net *net, PyArrayObject *params, PyArrayObject *bufs,
                             const char *fn) {
    int64_t np_, nb;
    sal_net_arena_sizes(net, &np_, &nb);
    if (PyArray_SIZE(params) != np_ || (bufs && PyArray_SIZE(bufs) != nb)) {
        PyErr_Format(PyExc_ValueError, "%s: the arenas have %lld parameters and %lld buffer values, "
                     "the engine was built for %lld and %lld", fn, (long long)PyArray_SIZE(params),
                     bufs ? (long long)PyArray_SIZE(bufs) : -1LL, (long long)np_, (long long)nb);
        return -1;
    }
    return 0;
}

/* What the second arena of a call is: the buffers or the grads. */
enum { BUFFERS, GRADS };

/* The engine in cap and its arenas, checked against it: *params and *second are new
 * references to float32 arrays used in place (never copies).  An exported network passes
 * its one weight arena as both params and buffers. */
static sal_net *net_arenas(PyObject *cap, PyObject *oparams, PyObject *osecond, int role,
                           PyArrayObject **params, PyArrayObject **second, const char *fn) {
    *params = *second = NULL;
    sal_net *net = engine_of(cap, NET_CAPSULE, "net_create", fn);
    if (!net || !(*params = as_inplace(oparams, NPY_FLOAT32, fn, "params", -1, "")))
        return NULL;
    if (!(*second = as_inplace(osecond, NPY_FLOAT32, fn, role == GRADS ? "grads" : "buffers", -1,
                               "")))
        return NULL;
    if (role == GRADS ? check_arena_sizes(net, *params, NULL, fn) ||
                            check_arena_sizes(net, *second, NULL, fn)
                      : check_arena_sizes(net, *params, *second, fn))
        return NULL;
    return net;
}

/* shapes (B, 3) int64 of every buffer for an input (C, H, W), from the op rows and the
 * buffers' channel counts (sal_net_shapes: the ops' own size rules) */
static PyObject *core_net_shapes(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ops", "channels", "input_shape", NULL};
    const char *fn = "net_shapes";
    PyObject *oops, *ochan, *oin;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &oops, &ochan, &oin)) return NULL;
    const int nf = (int)(sizeof(sal_op) / sizeof(int64_t));
    PyArrayObject *ops = NULL, *chan = NULL, *in = NULL, *shapes = NULL;
    PyObject *ret = NULL;
    ops = (PyArrayObject *)PyArray_FROMANY(oops, NPY_INT64, 2, 2, NPY_ARRAY_IN_ARRAY);
    chan = ops ? (PyArrayObject *)PyArray_FROMANY(ochan, NPY_INT64, 1, 1, NPY_ARRAY_IN_ARRAY) : NULL;
    in = chan ? (PyArrayObject *)PyArray_FROMANY(oin, NPY_INT64, 1, 1, NPY_ARRAY_IN_ARRAY) : NULL;
    if (!in) goto done;
    if (PyArray_DIM(ops, 1) != nf || PyArray_DIM(in, 0) != 3 || PyArray_DIM(chan, 0) < 1) {
        PyErr_Format(PyExc_ValueError, "%s: ops (n, %d), channels (B,) and input_shape (3,) "
                     "expected", fn, nf);
        goto done;
    }
    npy_intp dims[2] = {PyArray_DIM(chan, 0), 3};
    if (!(shapes = new_empty(2, dims, NPY_INT64))) goto done;
    if (failed(m, sal_net_shapes(PyArray_DATA(shapes), PyArray_DATA(in), PyArray_DATA(chan),
                                 PyArray_DIM(chan, 0), PyArray_DATA(ops), PyArray_DIM(ops, 0)), fn))
        goto done;
    ret = (PyObject *)shapes;
    shapes = NULL;
done:
    Py_XDECREF(ops); Py_XDECREF(chan); Py_XDECREF(in); Py_XDECREF(shapes);
    return ret;
}
PyDoc_STRVAR(net_shapes_doc,
    DOC("net_shapes(ops, channels, input_shape)", " -> shapes",
        "Per-buffer (C, H, W) int64 (B, 3) for an input of per-sample shape (C, H, W), from\n"
        "the op rows and every buffer's channel count, by the ops' own size rules."));

static PyObject *core_net_create(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"shapes", "ops", "shifts", "pairs", "nparams", "nbuffers", NULL};
    const char *fn = "net_create";
    PyObject *in[4];
    long long nparams, nbuffers;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOLL", kwlist, &in[0], &in[1], &in[2], &in[3],
                                     &nparams, &nbuffers))
        return NULL;
    PyObject *ret = NULL;
    PyArrayObject *t[4] = {NULL, NULL, NULL, NULL};
    const int nf = (int)(sizeof(sal_op) / sizeof(int64_t));
    const int types[4] = {NPY_INT64, NPY_INT64, NPY_INT32, NPY_INT32}, cols[4] = {3, nf, 3, 4};
    char what[128];
    snprintf(what, sizeof what, "shapes (B, 3), ops (n, %d), shifts (M, 3) and pairs (P, 4)", nf);
    if (program_tables(t, in, types, cols, 4, fn, what)) goto done;
    sal_net *net = NULL;
    if (failed(m, sal_net_create(&net, PyArray_DATA(t[0]), PyArray_DIM(t[0], 0),
                                 PyArray_DATA(t[1]), PyArray_DIM(t[1], 0), PyArray_DATA(t[2]),
                                 PyArray_DIM(t[2], 0), PyArray_DATA(t[3]), PyArray_DIM(t[3], 0),
                                 nparams, nbuffers), fn))
        goto done;
    ret = PyCapsule_New(net, NET_CAPSULE, net_capsule_free);
    if (!ret) sal_net_free(net);
done:
    for (int k = 0; k < 4; k++) Py_XDECREF(t[k]);
    return ret;
}
PyDoc_STRVAR(net_create_doc,
    DOC("net_create(shapes, ops, shifts, pairs, nparams, nbuffers)", " -> engine",
        "A network program (salnp.program): buffer shapes (B, 3), op rows (sal_op), int32 shift\n"
        "rows (src, dy, dx), int32 SAL pairs (o, i, dy, dx), the two arena sizes."));

static PyObject *core_net_forward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "params", "buffers", "x", "train", "hard", "beta", NULL};
    const char *fn = "forward";
    PyObject *cap, *oparams, *obufs, *ox, *obeta = NULL;
    int train = 0, hard = 0;
    double beta = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|ppO", kwlist, &cap, &oparams, &obufs, &ox,
                                     &train, &hard, &obeta) ||
        f64_arg(obeta, fn, "beta", &beta))
        return NULL;
    PyArrayObject *params, *bufs, *x = NULL, *y = NULL;
    PyObject *ret = NULL;
    sal_net *net = net_arenas(cap, oparams, obufs, BUFFERS, &params, &bufs, fn);
    if (!net) goto done;
    x = as_f32(ox, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    sal_act xg;
    y = logits_for(x, sal_net_output_width(net), &xg);
    if (!y) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_net_forward(net, PyArray_DATA(y), PyArray_DATA(x), xg, PyArray_DATA(params),
                                  PyArray_DATA(bufs), train, hard, beta));
    ret = take_result(m, s, fn, &y);
done:
    Py_XDECREF(params); Py_XDECREF(bufs); Py_XDECREF(x); Py_XDECREF(y);
    return ret;
}
PyDoc_STRVAR(net_forward_doc,
    DOC("net_forward(net, params, buffers, x, train=False, hard=False, beta=1.0)", " -> logits",
        "Run the program; params and buffers are the arenas (buffers updated in training)."));

static PyObject *core_net_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "params", "grads", "grad_logits", NULL};
    const char *fn = "backward";
    PyObject *cap, *oparams, *ograds, *ogy;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO", kwlist, &cap, &oparams, &ograds, &ogy))
        return NULL;
    PyArrayObject *params, *grads, *gy = NULL;
    PyObject *ret = NULL;
    sal_net *net = net_arenas(cap, oparams, ograds, GRADS, &params, &grads, fn);
    if (!net) goto done;
    gy = as_f32(ogy, fn, "grad_logits", 2, "(N, K)");
    if (!gy) goto done;
    npy_intp want[2] = {sal_net_last_batch(net), sal_net_output_width(net)};
    char expect[64];
    snprintf(expect, sizeof expect, "(N, K) = (%lld, %lld) of the last forward", (long long)want[0],
             (long long)want[1]);
    if (require_shape(gy, 2, want, fn, "grad_logits", expect)) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_net_backward(net, PyArray_DATA(grads), PyArray_DATA(gy),
                                   PyArray_DATA(params)));
    if (failed(m, s, fn)) goto done;
    ret = Py_NewRef(Py_None);
done:
    Py_XDECREF(params); Py_XDECREF(grads); Py_XDECREF(gy);
    return ret;
}
PyDoc_STRVAR(net_backward_doc,
    DOC("net_backward(net, params, grads, grad_logits)", "",
        "Accumulate dL/dparams into grads for the last forward (SAL masks are read from the\n"
        "buffers array of that forward: keep it alive)."));

/* ---- accounting ---------------------------------------------------------------------- */

/* Columns of the int64 part of a count: op, kind, in (C, H, W), out (C, H, W), train_only,
 * kept, macs, bwd_macs, shift_moves; params come as a separate float64 vector. */
#define COUNT_NCOL 13

/* (ints (nops, 13) int64, params (nops,) float64) from rows, or NULL with an error set */
static PyObject *count_result(const sal_count_row *rows, int64_t nops) {
    npy_intp di[2] = {(npy_intp)nops, COUNT_NCOL}, dp[1] = {(npy_intp)nops};
    PyArrayObject *ints = new_empty(2, di, NPY_INT64), *par = new_empty(1, dp, NPY_FLOAT64);
    PyObject *ret = NULL;
    if (ints && par) {
        int64_t *iv = PyArray_DATA(ints);
        double *pv = PyArray_DATA(par);
        for (int64_t i = 0; i < nops; i++) {
            const sal_count_row *r = &rows[i];
            int64_t row[COUNT_NCOL] = {r->op, r->kind, r->in[0], r->in[1], r->in[2], r->out[0],
                                       r->out[1], r->out[2], r->train_only, r->kept, r->macs,
                                       r->bwd_macs, r->shift_moves};
            memcpy(iv + i * COUNT_NCOL, row, sizeof row);
            pv[i] = r->params;
        }
        ret = PyTuple_Pack(2, (PyObject *)ints, (PyObject *)par);
    }
    Py_XDECREF(ints); Py_XDECREF(par);
    return ret;
}

static PyObject *core_net_count(PyObject *m, PyObject *cap) {
    const char *fn = "count";
    sal_net *net = engine_of(cap, NET_CAPSULE, "net_create", fn);
    if (!net) return NULL;
    int64_t nops;
    sal_net_program(net, NULL, NULL, NULL, &nops);
    sal_count_row *rows = PyMem_RawMalloc((size_t)nops * sizeof *rows);
    if (!rows) return PyErr_NoMemory();
    PyObject *ret = NULL;
    if (!failed(m, sal_net_count(net, rows), fn)) ret = count_result(rows, nops);
    PyMem_RawFree(rows);
    return ret;
}
PyDoc_STRVAR(net_count_doc,
    DOC("net_count(net)", " -> (ints, params)",
        "Accounting of a network program per op (sal/count.h): ints int64 (nops, 13) with\n"
        "columns op, kind, in C, H, W, out C, H, W, train_only, kept, macs, bwd_macs,\n"
        "shift_moves (per image); params float64 (nops,)."));

static PyObject *core_net_info(PyObject *m, PyObject *cap) {
    sal_net *net = engine_of(cap, NET_CAPSULE, "net_create", "net_info");
    if (!net) return NULL;
    int64_t why, nparams, nbuffers;
    const int trainable = sal_net_trainable(net, &why);
    sal_net_arena_sizes(net, &nparams, &nbuffers);
    return Py_BuildValue("{s:L,s:O,s:L,s:L,s:L}", "macs", (long long)sal_net_macs(net),
                         "trainable", trainable ? Py_True : Py_False, "untrainable_op",
                         (long long)why, "nparams", (long long)nparams, "nbuffers",
                         (long long)nbuffers);
}
PyDoc_STRVAR(net_info_doc,
    DOC("net_info(net)", " -> dict",
        "macs per image, trainable (whether backward is defined) and the first op that forbids\n"
        "it (untrainable_op, -1: none), the arena sizes."));

static PyObject *core_net_set_checkpoints(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "bounds", NULL};
    const char *fn = "set_checkpoints";
    PyObject *cap, *ob;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &cap, &ob)) return NULL;
    sal_net *net = engine_of(cap, NET_CAPSULE, "net_create", fn);
    if (!net) return NULL;
    PyArrayObject *b = (PyArrayObject *)PyArray_FROMANY(ob, NPY_INT64, 2, 2, NPY_ARRAY_IN_ARRAY);
    if (!b) return NULL;
    PyObject *ret = NULL;
    if (PyArray_DIM(b, 1) != 2) {
        PyErr_Format(PyExc_ValueError, "%s: bounds must have shape (nseg, 2)", fn);
    } else if (!failed(m, sal_net_set_checkpoints(net, PyArray_DATA(b), PyArray_DIM(b, 0)), fn)) {
        ret = Py_NewRef(Py_None);
    }
    Py_DECREF(b);
    return ret;
}
PyDoc_STRVAR(net_set_checkpoints_doc,
    DOC("net_set_checkpoints(net, bounds)", "",
        "Activation checkpointing: bounds int64 (nseg, 2), [first op, end op) of each segment\n"
        "whose inner activations backward recomputes instead of keeping (sal/net.h)."));

static PyObject *core_net_set_streams(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "chunk", NULL};
    const char *fn = "set_streams";
    PyObject *cap;
    long long chunk;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL", kwlist, &cap, &chunk)) return NULL;
    sal_net *net = engine_of(cap, NET_CAPSULE, "net_create", fn);
    if (!net) return NULL;
    if (chunk < -1) {
        PyErr_Format(PyExc_ValueError, "%s: chunk=%lld: must be -1 (auto), 0 (never) or an "
                     "image count >= 1", fn, chunk);
        return NULL;
    }
    if (failed(m, sal_net_set_streams(net, chunk), fn)) return NULL;
    return Py_NewRef(Py_None);
}
PyDoc_STRVAR(net_set_streams_doc,
    DOC("net_set_streams(net, chunk)", "",
        "Streamed evaluation forwards (sal/net.h \"Streams\"): chunk -1 auto (the default),\n"
        "0 never (every forward over the whole batch), k >= 1 always chunks of k images."));

static PyObject *core_net_profile(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "on", NULL};
    const char *fn = "net_profile";
    PyObject *cap;
    int on;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Op", kwlist, &cap, &on)) return NULL;
    sal_net *net = engine_of(cap, NET_CAPSULE, "net_create", fn);
    if (!net) return NULL;
    int64_t nops;
    sal_net_program(net, NULL, NULL, NULL, &nops);
    npy_intp dims[1] = {(npy_intp)nops};
    PyArrayObject *out = new_empty(1, dims, NPY_FLOAT64);
    if (!out) return NULL;
    if (failed(m, sal_net_profile(net, on, PyArray_DATA(out)), fn)) {
        Py_DECREF(out);
        return NULL;
    }
    return (PyObject *)out;
}
PyDoc_STRVAR(net_profile_doc,
    DOC("net_profile(net, on)", " -> seconds",
        "Per-op thread CPU seconds of the forwards since profiling was turned on (float64\n"
        "(nops,)); then on=True restarts the sums, on=False stops profiling (sal/net.h)."));

PyMethodDef core_net_methods[] = {
    KW_METHOD("net_profile", core_net_profile, net_profile_doc),
    KW_METHOD("net_set_streams", core_net_set_streams, net_set_streams_doc),
    KW_METHOD("net_set_checkpoints", core_net_set_checkpoints, net_set_checkpoints_doc),
    KW_METHOD("net_shapes", core_net_shapes, net_shapes_doc),
    KW_METHOD("net_create", core_net_create, net_create_doc),
    KW_METHOD("net_forward", core_net_forward, net_forward_doc),
    KW_METHOD("net_backward", core_net_backward, net_backward_doc),
    {"net_count", core_net_count, METH_O, net_count_doc},
    {"net_info", core_net_info, METH_O, net_info_doc},
    {NULL, NULL, 0, NULL}};
