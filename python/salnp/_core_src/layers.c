/* salnp._core: the layers of sal/layers.h: batch norm (+ ReLU + residual), ReLU, add,
 * global average pooling, Linear, softmax cross-entropy and the SGD step. */
#include "binding.h"

#include <math.h>

/* ---- batch norm -------------------------------------------------------------------- */

/* "(N, C, H, W) = (n, c, h, w)" of the activation d.x */
static void nchw_expect(char *buf, size_t n, sal_act x) {
    snprintf(buf, n, "(N, C, H, W) = (%lld, %lld, %lld, %lld)", (long long)x.n, (long long)x.c,
             (long long)x.h, (long long)x.w);
}

/* running_mean / running_var: updated in place in training (both or neither), read only
 * (and required) in eval mode */
static int running_stats(PyArrayObject **rm, PyArrayObject **rv, PyObject *orm, PyObject *orv,
                         int training, int typenum, npy_intp C, const char *fn) {
    if (!training) {
        if (orm == Py_None || orv == Py_None) {
            PyErr_Format(PyExc_TypeError, "%s: %s must be an array in eval mode (training=False), "
                         "got None", fn, orm == Py_None ? "running_mean" : "running_var");
            return -1;
        }
        return channel_vec(rm, orm, typenum, 0, C, fn, "running_mean") ||
               channel_vec(rv, orv, typenum, 0, C, fn, "running_var") ? -1 : 0;
    }
    if ((orm == Py_None) != (orv == Py_None)) {
        PyErr_Format(PyExc_ValueError, "%s: running_mean and running_var: give both or "
                     "neither (got %s and %s)", fn, orm == Py_None ? "None" : "an array",
                     orv == Py_None ? "None" : "an array");
        return -1;
    }
    if (orm == Py_None) return 0;
    char expect[48];
    snprintf(expect, sizeof expect, "(C,) = (%lld,)", (long long)C);
    *rm = as_inplace(orm, typenum, fn, "running_mean", 1, "(C,)");
    if (!*rm || require_shape(*rm, 1, &C, fn, "running_mean", expect)) return -1;
    *rv = as_inplace(orv, typenum, fn, "running_var", 1, "(C,)");
    if (!*rv || require_shape(*rv, 1, &C, fn, "running_var", expect)) return -1;
    return 0;
}

/* the three batch-norm entry points of each direction */
enum { BN_PLAIN, BN_RELU, BN_REF };

/* batch_norm (BN_PLAIN) / batch_norm_relu (BN_RELU) / ref_batch_norm_f64 (BN_REF) */
static PyObject *bn_forward(PyObject *m, PyObject *args, PyObject *kw, int variant,
                            const char *fn) {
    const int relu = variant == BN_RELU, typenum = variant == BN_REF ? NPY_FLOAT64 : NPY_FLOAT32;
    static char *kwlist_bn[] = {"x", "gamma", "beta", "running_mean", "running_var", "training",
                                "momentum", "eps", NULL};
    static char *kwlist_relu[] = {"x", "gamma", "beta", "running_mean", "running_var", "residual",
                                  "training", "momentum", "eps", NULL};
    PyObject *ox, *og, *ob, *orm = Py_None, *orv = Py_None, *ores = Py_None;
    PyObject *omomentum = NULL, *oeps = NULL;
    int training = 1;
    double momentum = SAL_BN_MOMENTUM, eps = SAL_BN_EPS;
    int ok = relu ? PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOOpOO", kwlist_relu, &ox, &og, &ob,
                                                &orm, &orv, &ores, &training, &omomentum, &oeps)
                  : PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOpOO", kwlist_bn, &ox, &og, &ob,
                                                &orm, &orv, &training, &omomentum, &oeps);
    if (!ok || f64_arg(omomentum, fn, "momentum", &momentum) || f64_arg(oeps, fn, "eps", &eps))
        return NULL;
    PyArrayObject *x = NULL, *g = NULL, *b = NULL, *rm = NULL, *rv = NULL, *res = NULL;
    PyArrayObject *y = NULL, *sm = NULL, *si = NULL;
    PyObject *ret = NULL;
    x = as_real(ox, typenum, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    const npy_intp C = PyArray_DIM(x, 1);
    if (channel_vec(&g, og, typenum, 1, C, fn, "gamma") ||
        channel_vec(&b, ob, typenum, 1, C, fn, "beta"))
        goto done;
    sal_bn_desc d = {act_nchw(x), training, momentum, eps, 0};
    if (refused(sal_bn_check(&d), fn) ||
        running_stats(&rm, &rv, orm, orv, training, typenum, C, fn))
        goto done;
    if (ores != Py_None) {
        res = as_real(ores, typenum, fn, "residual", 4, "(N, C, H, W)");
        if (!res) goto done;
        char ex4[96];
        nchw_expect(ex4, sizeof ex4, d.x);
        if (require_shape(res, 4, PyArray_DIMS(x), fn, "residual", ex4)) goto done;
    }
    y = new_empty(4, PyArray_DIMS(x), typenum);
    sm = new_empty(1, &C, typenum);
    si = new_empty(1, &C, typenum);
    if (!y || !sm || !si) goto done;
    void *ys = PyArray_DATA(y), *sms = PyArray_DATA(sm), *sis = PyArray_DATA(si),
         *xs = PyArray_DATA(x);
    sal_status s;
    CALL_TYPED(s, typenum,
               relu ? sal_bn_relu_fwd(ys, sms, sis, data_or_null(rm), data_or_null(rv), xs,
                                      data_or_null(g), data_or_null(b), data_or_null(res), &d)
                    : sal_bn_fwd(ys, sms, sis, data_or_null(rm), data_or_null(rv), xs,
                                 data_or_null(g), data_or_null(b), &d),
               sal_ref_bn_fwd_f64(ys, sms, sis, data_or_null(rm), data_or_null(rv), xs,
                                  data_or_null(g), data_or_null(b), &d));
    if (failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(NNN)", y, sm, si);
    y = sm = si = NULL;
done:
    Py_XDECREF(x); Py_XDECREF(g); Py_XDECREF(b); Py_XDECREF(rm); Py_XDECREF(rv);
    Py_XDECREF(res); Py_XDECREF(y); Py_XDECREF(sm); Py_XDECREF(si);
    return ret;
}

/* batch_norm_backward / batch_norm_relu_backward (BN_RELU: takes y, returns grad_residual)
 * / ref_batch_norm_backward_f64 (BN_REF) */
static PyObject *bn_backward(PyObject *m, PyObject *args, PyObject *kw, int variant,
                             const char *fn) {
    const int relu = variant == BN_RELU, typenum = variant == BN_REF ? NPY_FLOAT64 : NPY_FLOAT32;
    static char *kwlist_bn[] = {"x", "gamma", "grad_y", "save_mean", "save_invstd", "training",
                                NULL};
    static char *kwlist_relu[] = {"x", "gamma", "y", "grad_y", "save_mean", "save_invstd",
                                  "training", NULL};
    PyObject *ox, *og, *oy = Py_None, *ogy, *osm, *osi;
    int training = 1;
    int ok = relu ? PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO|p", kwlist_relu, &ox, &og, &oy,
                                                &ogy, &osm, &osi, &training)
                  : PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|p", kwlist_bn, &ox, &og, &ogy,
                                                &osm, &osi, &training);
    if (!ok) return NULL;
    PyArrayObject *x = NULL, *g = NULL, *y = NULL, *gy = NULL, *sm = NULL, *si = NULL;
    PyArrayObject *gx = NULL, *gg = NULL, *gb = NULL, *gr = NULL;
    PyObject *ret = NULL;
    x = as_real(ox, typenum, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    const npy_intp C = PyArray_DIM(x, 1);
    sal_bn_desc d = {act_nchw(x), training, SAL_BN_MOMENTUM, SAL_BN_EPS, 0};
    if (refused(sal_bn_check(&d), fn)) goto done;
    char ex4[96];
    nchw_expect(ex4, sizeof ex4, d.x);
    if (channel_vec(&g, og, typenum, 1, C, fn, "gamma")) goto done;
    if (relu) {
        y = as_real(oy, typenum, fn, "y", 4, "(N, C, H, W)");
        if (!y || require_shape(y, 4, PyArray_DIMS(x), fn, "y", ex4)) goto done;
    }
    gy = as_real(ogy, typenum, fn, "grad_y", 4, "(N, C, H, W)");
    if (!gy || require_shape(gy, 4, PyArray_DIMS(x), fn, "grad_y", ex4)) goto done;
    if (channel_vec(&sm, osm, typenum, 0, C, fn, "save_mean") ||
        channel_vec(&si, osi, typenum, 0, C, fn, "save_invstd"))
        goto done;
    gx = new_array(4, PyArray_DIMS(x), typenum);
    gg = new_array(1, &C, typenum);
    gb = new_array(1, &C, typenum);
    if (relu) gr = new_array(4, PyArray_DIMS(x), typenum);
    if (!gx || !gg || !gb || (relu && !gr)) goto done;
    void *gxs = PyArray_DATA(gx), *ggs = PyArray_DATA(gg), *gbs = PyArray_DATA(gb),
         *gys = PyArray_DATA(gy), *xs = PyArray_DATA(x), *sms = PyArray_DATA(sm),
         *sis = PyArray_DATA(si);
    sal_status s;
    CALL_TYPED(s, typenum,
               relu ? sal_bn_relu_bwd(gxs, ggs, gbs, PyArray_DATA(gr), gys, PyArray_DATA(y), xs,
                                      data_or_null(g), sms, sis, &d)
                    : sal_bn_bwd(gxs, ggs, gbs, gys, xs, data_or_null(g), sms, sis, &d),
               sal_ref_bn_bwd_f64(gxs, ggs, gbs, gys, xs, data_or_null(g), sms, sis, &d));
    if (failed(m, s, fn)) goto done;
    ret = relu ? Py_BuildValue("(NNNN)", gx, gg, gb, gr) : Py_BuildValue("(NNN)", gx, gg, gb);
    gx = gg = gb = gr = NULL;
done:
    Py_XDECREF(x); Py_XDECREF(g); Py_XDECREF(y); Py_XDECREF(gy); Py_XDECREF(sm);
    Py_XDECREF(si); Py_XDECREF(gx); Py_XDECREF(gg); Py_XDECREF(gb); Py_XDECREF(gr);
    return ret;
}

WRAP(batch_norm, bn_forward, BN_PLAIN)
PyDoc_STRVAR(batch_norm_doc,
    DOC("batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5)", " -> (y, save_mean, save_invstd)",
        "Batch normalisation over N, H, W per channel, as torch.nn.functional.batch_norm.\n"
        "x (N, C, H, W); gamma, beta (C,) or None (1 and 0); returns y (N, C, H, W) and the\n"
        "(C,) mean and 1/sqrt(var + eps) that normalised x, for batch_norm_backward.\n"
        "training=True: batch statistics (biased variance; needs N*H*W >= 2); running_mean and\n"
        "running_var, when given (both or neither), are UPDATED IN PLACE with momentum, the\n"
        "variance unbiased, so they must be float32, C-contiguous, writeable arrays (no copy).\n"
        "training=False: normalises with running_mean, running_var (required, read only)."));

WRAP(batch_norm_backward, bn_backward, BN_PLAIN)
PyDoc_STRVAR(batch_norm_backward_doc,
    DOC("batch_norm_backward(x, gamma, grad_y, save_mean, save_invstd, training=True)", " -> (grad_x, grad_gamma, grad_beta)",
        "Gradients of batch_norm given grad_y = dL/dy and the save_mean, save_invstd it returned.\n"
        "training selects the batch-statistics formula (True) or the eval one (False) and must\n"
        "match the forward call. gamma None means 1."));

WRAP(batch_norm_relu, bn_forward, BN_RELU)
PyDoc_STRVAR(batch_norm_relu_doc,
    DOC("batch_norm_relu(x, gamma, beta, running_mean=None, running_var=None, residual=None, training=True, momentum=0.1, eps=1e-5)", " -> (y, save_mean, save_invstd)",
        "Fused relu(batch_norm(x) + residual) in one pass (residual None: relu(batch_norm(x))).\n"
        "Statistics and running-stat update exactly as batch_norm."));

WRAP(batch_norm_relu_backward, bn_backward, BN_RELU)
PyDoc_STRVAR(batch_norm_relu_backward_doc,
    DOC("batch_norm_relu_backward(x, gamma, y, grad_y, save_mean, save_invstd, training=True)", " -> (grad_x, grad_gamma, grad_beta, grad_residual)",
        "Gradients of batch_norm_relu from its output y (the ReLU mask y > 0) and grad_y.\n"
        "grad_residual = grad_y * (y > 0) (ignore it when no residual was added)."));

WRAP(ref_batch_norm_f64, bn_forward, BN_REF)
PyDoc_STRVAR(ref_batch_norm_f64_doc,
    DOC("ref_batch_norm_f64(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5)", " -> (y, save_mean, save_invstd)",
        "Naive float64 reference (tests); running stats must be float64 arrays."));

WRAP(ref_batch_norm_backward_f64, bn_backward, BN_REF)
PyDoc_STRVAR(ref_batch_norm_backward_f64_doc,
    DOC("ref_batch_norm_backward_f64(x, gamma, grad_y, save_mean, save_invstd, training=True)", " -> (grad_x, grad_gamma, grad_beta)",
        "Naive float64 reference (tests)."));

/* ---- ReLU, add ----------------------------------------------------------------------- */

/* relu(x) (op 0), relu_backward(y, grad_y) (op 1), add(a, b) (op 2): float32, any shape */
static PyObject *elementwise(PyObject *m, PyObject *args, PyObject *kw, int op, const char *fn) {
    static char *kw_relu[] = {"x", NULL};
    static char *kw_relu_bwd[] = {"y", "grad_y", NULL};
    static char *kw_add[] = {"a", "b", NULL};
    char **kwlist = op == 0 ? kw_relu : op == 1 ? kw_relu_bwd : kw_add;
    PyObject *oa, *ob = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, op ? "OO" : "O", kwlist, &oa, &ob)) return NULL;
    PyArrayObject *a = NULL, *b = NULL, *out = NULL;
    PyObject *ret = NULL;
    a = as_f32(oa, fn, kwlist[0], -1, "of any shape");
    if (!a) goto done;
    if (op) {
        b = as_f32(ob, fn, kwlist[1], -1, "of any shape");
        if (!b || same_shape(a, b, fn, kwlist[0], kwlist[1])) goto done;
    }
    out = op == 1 ? new_array(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32)
                  : new_empty(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32);
    if (!out) goto done;
    float *o = PyArray_DATA(out), *av = PyArray_DATA(a), *bv = data_or_null(b);
    sal_status s;
    CALL_NOGIL(s, op == 0   ? sal_relu_fwd(o, av, act_flat(a))
                  : op == 1 ? sal_relu_bwd(o, bv, av, act_flat(a))
                            : sal_add_fwd(o, av, bv, act_flat(a)));
    ret = take_result(m, s, fn, &out);
done:
    Py_XDECREF(a); Py_XDECREF(b); Py_XDECREF(out);
    return ret;
}

WRAP(relu, elementwise, 0)
PyDoc_STRVAR(relu_doc,
    DOC("relu(x)", " -> y",
        "max(x, 0) elementwise, any shape."));

WRAP(relu_backward, elementwise, 1)
PyDoc_STRVAR(relu_backward_doc,
    DOC("relu_backward(y, grad_y)", " -> grad_x",
        "grad_y * (y > 0); y is the output of relu (its input gives the same mask)."));

WRAP(add, elementwise, 2)
PyDoc_STRVAR(add_doc,
    DOC("add(a, b)", " -> y",
        "a + b for two arrays of one shape (no broadcasting). Its backward passes grad_y to both."));

/* ---- global average pooling ------------------------------------------------------------ */

static PyObject *core_global_avg_pool(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", NULL};
    const char *fn = "global_avg_pool";
    PyObject *ox;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &ox)) return NULL;
    PyArrayObject *x = as_f32(ox, fn, "x", 4, "(N, C, H, W)"), *y = NULL;
    if (!x) return NULL;
    y = new_empty(2, PyArray_DIMS(x), NPY_FLOAT32);
    sal_status s = SAL_OK;
    if (y) CALL_NOGIL(s, sal_gap_fwd(PyArray_DATA(y), PyArray_DATA(x), act_nchw(x)));
    Py_DECREF(x);
    if (y && failed(m, s, fn)) Py_CLEAR(y);
    return (PyObject *)y;
}
PyDoc_STRVAR(global_avg_pool_doc,
    DOC("global_avg_pool(x)", " -> y",
        "Mean over H, W: x (N, C, H, W) -> y (N, C)."));

static PyObject *core_global_avg_pool_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"grad_y", "input_shape", NULL};
    const char *fn = "global_avg_pool_backward";
    PyObject *ogy, *oshape;
    npy_intp dims[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &ogy, &oshape) ||
        parse_shape4(oshape, fn, "input_shape", dims))
        return NULL;
    PyArrayObject *gy = as_f32(ogy, fn, "grad_y", 2, "(N, C)"), *gx = NULL;
    if (!gy) return NULL;
    char expect[64];
    snprintf(expect, sizeof expect, "(N, C) = (%lld, %lld)", (long long)dims[0],
             (long long)dims[1]);
    if (!require_shape(gy, 2, dims, fn, "grad_y", expect) &&
        (gx = new_array(4, dims, NPY_FLOAT32)) != NULL) {
        const sal_act a = {dims[0], dims[1], dims[2], dims[3], SAL_NCHW};
        sal_status s;
        CALL_NOGIL(s, sal_gap_bwd(PyArray_DATA(gx), PyArray_DATA(gy), a));
        if (failed(m, s, fn)) Py_CLEAR(gx);
    }
    Py_DECREF(gy);
    return (PyObject *)gx;
}
PyDoc_STRVAR(global_avg_pool_backward_doc,
    DOC("global_avg_pool_backward(grad_y, input_shape)", " -> grad_x",
        "grad_y (N, C) spread evenly over H, W; input_shape = (N, C, H, W)."));

/* ---- Linear ------------------------------------------------------------------------------ */

/* x (N, I) and w (O, I) as float32; NI, NO: I is complex.h's imaginary unit */
static int linear_xw(PyArrayObject **x, PyArrayObject **w, PyObject *ox, PyObject *ow,
                     const char *fn, npy_intp *N, npy_intp *NI, npy_intp *NO) {
    *x = as_f32(ox, fn, "x", 2, "(N, I)");
    if (!*x) return -1;
    *w = as_f32(ow, fn, "w", 2, "(O, I)");
    if (!*w) return -1;
    *N = PyArray_DIM(*x, 0);
    *NI = PyArray_DIM(*x, 1);
    *NO = PyArray_DIM(*w, 0);
    char expect[64];
    snprintf(expect, sizeof expect, "(O, I=%lld)", (long long)*NI);
    npy_intp want_w[2] = {-1, *NI};
    return require_shape(*w, 2, want_w, fn, "w", expect);
}

static PyObject *core_linear(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "b", NULL};
    const char *fn = "linear";
    PyObject *ox, *ow, *ob = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &ox, &ow, &ob)) return NULL;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *y = NULL;
    PyObject *ret = NULL;
    npy_intp N, NI, NO;
    if (linear_xw(&x, &w, ox, ow, fn, &N, &NI, &NO)) goto done;
    if (ob != Py_None) {
        b = as_f32(ob, fn, "b", 1, "(O,)");
        if (!b) goto done;
        char expect[64];
        snprintf(expect, sizeof expect, "(O,) = (%lld,)", (long long)NO);
        if (require_shape(b, 1, &NO, fn, "b", expect)) goto done;
    }
    npy_intp dims[2] = {N, NO};
    y = new_empty(2, dims, NPY_FLOAT32);
    if (!y) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_linear_fwd(PyArray_DATA(y), PyArray_DATA(x), PyArray_DATA(w),
                                 data_or_null(b), N, NI, NO));
    ret = take_result(m, s, fn, &y);
done:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(b); Py_XDECREF(y);
    return ret;
}
PyDoc_STRVAR(linear_doc,
    DOC("linear(x, w, b=None)", " -> y",
        "y (N, O) = x (N, I) w (O, I)^T + b (O,), as torch.nn.functional.linear."));

static PyObject *core_linear_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "grad_y", NULL};
    const char *fn = "linear_backward";
    PyObject *ox, *ow, *ogy;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &ox, &ow, &ogy)) return NULL;
    PyArrayObject *x = NULL, *w = NULL, *gy = NULL, *gx = NULL, *gw = NULL, *gb = NULL;
    PyObject *ret = NULL;
    npy_intp N, NI, NO;
    if (linear_xw(&x, &w, ox, ow, fn, &N, &NI, &NO)) goto done;
    gy = as_f32(ogy, fn, "grad_y", 2, "(N, O)");
    if (!gy) goto done;
    char expect[64];
    snprintf(expect, sizeof expect, "(N, O) = (%lld, %lld)", (long long)N, (long long)NO);
    npy_intp want_gy[2] = {N, NO};
    if (require_shape(gy, 2, want_gy, fn, "grad_y", expect)) goto done;
    gx = new_array(2, PyArray_DIMS(x), NPY_FLOAT32);
    gw = new_array(2, PyArray_DIMS(w), NPY_FLOAT32);
    gb = new_array(1, &NO, NPY_FLOAT32);
    if (!gx || !gw || !gb) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_linear_bwd(PyArray_DATA(gx), PyArray_DATA(gw), PyArray_DATA(gb),
                                 PyArray_DATA(gy), PyArray_DATA(x), PyArray_DATA(w), N, NI, NO));
    if (failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(NNN)", gx, gw, gb);
    gx = gw = gb = NULL;
done:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(gy); Py_XDECREF(gx); Py_XDECREF(gw); Py_XDECREF(gb);
    return ret;
}
PyDoc_STRVAR(linear_backward_doc,
    DOC("linear_backward(x, w, grad_y)", " -> (grad_x, grad_w, grad_b)",
        "Gradients of linear given grad_y (N, O); grad_b (O,) = grad_y summed over N."));

/* ---- cross-entropy ------------------------------------------------------------------------ */

/* New reference to labels as an int32 (N,) array with values in [0, K): integer dtypes
 * only (TypeError otherwise); range checked before the narrowing cast. */
static PyArrayObject *as_labels(PyObject *obj, npy_intp N, npy_intp K, const char *fn) {
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: labels must be an integer array, got None", fn);
        return NULL;
    }
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (raw == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: labels must be an integer array, got %.100s", fn,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *l64 = NULL, *out = NULL;
    int kind = PyArray_DESCR(raw)->kind;
    if (kind != 'i' && kind != 'u') {
        PyErr_Format(PyExc_TypeError, "%s: labels must be an integer array (class indices), got "
                     "dtype %S", fn, (PyObject *)PyArray_DESCR(raw));
        goto done;
    }
    char expect[48];
    snprintf(expect, sizeof expect, "(N,) = (%lld,)", (long long)N);
    if (require_shape(raw, 1, &N, fn, "labels", expect)) goto done;
    l64 = (PyArrayObject *)PyArray_FromAny((PyObject *)raw, PyArray_DescrFromType(NPY_INT64), 1, 1,
                                           NPY_ARRAY_CARRAY | NPY_ARRAY_FORCECAST, NULL);
    if (!l64) goto done;
    const npy_int64 *v = PyArray_DATA(l64);
    for (npy_intp i = 0; i < N; i++)
        if (v[i] < 0 || v[i] >= K) {  /* uint64 >= 2^63 wrapped to < 0 */
            PyErr_Format(PyExc_ValueError, "%s: labels[%lld]=%lld: must be in [0, K=%lld)", fn,
                         (long long)i, (long long)v[i], (long long)K);
            goto done;
        }
    out = (PyArrayObject *)PyArray_FromAny((PyObject *)l64, PyArray_DescrFromType(NPY_INT32), 1, 1,
                                           NPY_ARRAY_CARRAY | NPY_ARRAY_FORCECAST, NULL);
done:
    Py_DECREF(raw);
    Py_XDECREF(l64);
    return out;
}

/* cross_entropy(logits, labels) -> float;  cross_entropy_backward(logits, labels, grad=1.0) */
static PyObject *xent(PyObject *m, PyObject *args, PyObject *kw, int backward, const char *fn) {
    static char *kw_fwd[] = {"logits", "labels", NULL};
    static char *kw_bwd[] = {"logits", "labels", "grad", NULL};
    PyObject *oz, *ol, *ograd = NULL;
    double grad = 1.0;
    int ok = backward ? PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kw_bwd, &oz, &ol, &ograd)
                      : PyArg_ParseTupleAndKeywords(args, kw, "OO", kw_fwd, &oz, &ol);
    if (!ok || f64_arg(ograd, fn, "grad", &grad)) return NULL;
    PyArrayObject *z = NULL, *lab = NULL, *gz = NULL;
    PyObject *ret = NULL;
    z = as_f32(oz, fn, "logits", 2, "(N, K)");
    if (!z) goto done;
    const npy_intp N = PyArray_DIM(z, 0), K = PyArray_DIM(z, 1);
    lab = as_labels(ol, N, K, fn);
    if (!lab) goto done;
    sal_status s;
    if (backward) {
        if (!isfinite(grad)) {
            char v[32];
            snprintf(v, sizeof v, "%g", grad);  /* PyErr_Format has no %g */
            PyErr_Format(PyExc_ValueError, "%s: grad=%s: must be finite", fn, v);
            goto done;
        }
        gz = new_array(2, PyArray_DIMS(z), NPY_FLOAT32);
        if (!gz) goto done;
        CALL_NOGIL(s, sal_xent_bwd(PyArray_DATA(gz), PyArray_DATA(z), PyArray_DATA(lab), N, K,
                                   (float)grad));
        if (failed(m, s, fn)) goto done;
        ret = (PyObject *)gz;
        gz = NULL;
    } else {
        float loss = 0.0f;
        CALL_NOGIL(s, sal_xent_fwd(&loss, NULL, PyArray_DATA(z), PyArray_DATA(lab), N, K));
        if (failed(m, s, fn)) goto done;
        ret = PyFloat_FromDouble(loss);
    }
done:
    Py_XDECREF(z); Py_XDECREF(lab); Py_XDECREF(gz);
    return ret;
}

WRAP(cross_entropy, xent, 0)
PyDoc_STRVAR(cross_entropy_doc,
    DOC("cross_entropy(logits, labels)", " -> float",
        "Softmax cross-entropy, mean over the batch: logits (N, K), labels integer (N,) in [0, K)."));

WRAP(cross_entropy_backward, xent, 1)
PyDoc_STRVAR(cross_entropy_backward_doc,
    DOC("cross_entropy_backward(logits, labels, grad=1.0)", " -> grad_logits",
        "grad * (softmax(logits) - onehot(labels)) / N, shape (N, K)."));

/* ---- SGD ------------------------------------------------------------------------------------ */

/* segments: None or a sequence of (n, lr_mult, wd_mult); *out is PyMem_RawMalloc'ed */
static int parse_segments(PyObject *obj, sal_sgd_segment **out, Py_ssize_t *nseg, const char *fn) {
    *out = NULL;
    *nseg = 0;
    if (obj == Py_None) return 0;
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: segments must be None or a sequence of (n, lr_mult, "
                     "wd_mult) tuples, got %.100s", fn, Py_TYPE(obj)->tp_name);
        return -1;
    }
    const Py_ssize_t S = PySequence_Fast_GET_SIZE(seq);
    *out = (sal_sgd_segment *)PyMem_RawMalloc((size_t)(S ? S : 1) * sizeof **out);
    if (!*out) { Py_DECREF(seq); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < S; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        long long n;
        double lrm, wdm;
        if (!PyTuple_Check(it) || !PyArg_ParseTuple(it, "Ldd", &n, &lrm, &wdm)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: segments[%zd] must be a tuple (n: int, lr_mult: "
                         "float, wd_mult: float)", fn, i);
            Py_DECREF(seq);
            return -1;
        }
        (*out)[i] = (sal_sgd_segment){n, lrm, wdm};
    }
    *nseg = S;
    Py_DECREF(seq);
    return 0;
}

static PyObject *core_sgd_step(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"params", "grads", "momentum_buffer", "lr", "momentum",
                             "weight_decay", "nesterov", "dampening", "first_step", "segments",
                             NULL};
    const char *fn = "sgd_step";
    PyObject *op, *og, *ob, *osegs = Py_None, *olr, *omom = NULL, *owd = NULL, *odamp = NULL;
    double lr = 0.0, momentum = 0.9, weight_decay = 0.0, dampening = 0.0;
    int nesterov = 0, first = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|OOpOpO", kwlist, &op, &og, &ob, &olr,
                                     &omom, &owd, &nesterov, &odamp, &first, &osegs) ||
        f64_arg(olr, fn, "lr", &lr) || f64_arg(omom, fn, "momentum", &momentum) ||
        f64_arg(owd, fn, "weight_decay", &weight_decay) || f64_arg(odamp, fn, "dampening", &dampening))
        return NULL;
    PyArrayObject *p = NULL, *g = NULL, *buf = NULL;
    sal_sgd_segment *segs = NULL;
    Py_ssize_t nseg = 0;
    PyObject *ret = NULL;
    p = as_inplace(op, NPY_FLOAT32, fn, "params", -1, "");
    if (!p) goto done;
    if (ob != Py_None || momentum != 0.0) {
        buf = as_inplace(ob, NPY_FLOAT32, fn, "momentum_buffer", -1, "");
        if (!buf || same_shape(p, buf, fn, "params", "momentum_buffer")) goto done;
    }
    g = as_f32(og, fn, "grads", -1, "of the shape of params");
    if (!g || same_shape(p, g, fn, "params", "grads")) goto done;
    if (parse_segments(osegs, &segs, &nseg, fn)) goto done;
    const sal_sgd_desc d = {lr, momentum, dampening, weight_decay, nesterov};
    sal_status s;
    CALL_NOGIL(s, sal_sgd_step(PyArray_DATA(p), data_or_null(buf), PyArray_DATA(g),
                               PyArray_SIZE(p), &d, segs, nseg, first));
    if (failed(m, s, fn)) goto done;
    ret = Py_NewRef(Py_None);
done:
    PyMem_RawFree(segs);
    Py_XDECREF(p); Py_XDECREF(g); Py_XDECREF(buf);
    return ret;
}
PyDoc_STRVAR(sgd_step_doc,
    DOC("sgd_step(params, grads, momentum_buffer, lr, momentum=0.9, weight_decay=0.0, nesterov=False, dampening=0.0, first_step=False, segments=None)", " -> None",
        "One torch.optim.SGD step, in place on params and momentum_buffer (float32, C-contiguous,\n"
        "writeable arrays of one shape, e.g. flat arenas; the buffer may be None when momentum=0).\n"
        "first_step=True initialises the buffer to the gradient as PyTorch does; with\n"
        "dampening=0 a zeroed buffer gives the same result either way.\n"
        "segments: None or a sequence of (n, lr_mult, wd_mult) covering params in order (flat\n"
        "index), each run using lr*lr_mult and weight_decay*wd_mult (PyTorch's param groups)."));

PyMethodDef core_layers_methods[] = {
    KW_METHOD("batch_norm", core_batch_norm, batch_norm_doc),
    KW_METHOD("batch_norm_backward", core_batch_norm_backward, batch_norm_backward_doc),
    KW_METHOD("batch_norm_relu", core_batch_norm_relu, batch_norm_relu_doc),
    KW_METHOD("batch_norm_relu_backward", core_batch_norm_relu_backward,
              batch_norm_relu_backward_doc),
    KW_METHOD("ref_batch_norm_f64", core_ref_batch_norm_f64, ref_batch_norm_f64_doc),
    KW_METHOD("ref_batch_norm_backward_f64", core_ref_batch_norm_backward_f64,
              ref_batch_norm_backward_f64_doc),
    KW_METHOD("relu", core_relu, relu_doc),
    KW_METHOD("relu_backward", core_relu_backward, relu_backward_doc),
    KW_METHOD("add", core_add, add_doc),
    KW_METHOD("global_avg_pool", core_global_avg_pool, global_avg_pool_doc),
    KW_METHOD("global_avg_pool_backward", core_global_avg_pool_backward,
              global_avg_pool_backward_doc),
    KW_METHOD("linear", core_linear, linear_doc),
    KW_METHOD("linear_backward", core_linear_backward, linear_backward_doc),
    KW_METHOD("cross_entropy", core_cross_entropy, cross_entropy_doc),
    KW_METHOD("cross_entropy_backward", core_cross_entropy_backward, cross_entropy_backward_doc),
    KW_METHOD("sgd_step", core_sgd_step, sgd_step_doc),
    {NULL, NULL, 0, NULL}};
