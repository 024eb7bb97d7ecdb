/* salnp._core: the shift family of sal/shift.h: SL shift, ASL active shift and SAL
 * (float32 kernels and float64 reference twins). */
#include "binding.h"

#include <math.h>
#include <string.h>

static sal_shift_desc shift_desc_of(const npy_intp *xdims, long long stride) {
    return (sal_shift_desc){{xdims[0], xdims[1], xdims[2], xdims[3], SAL_NCHW}, stride};
}

/* ---- SL: integer shift ------------------------------------------------------------------ */

/* New reference to obj as an int32 (C, 2) offsets array.  Integer dtypes only (a float
 * array is refused even when its values are whole: use active_shift for real offsets);
 * values must fit int32. */
static PyArrayObject *as_offsets_i32(PyObject *obj, const char *fn, const char *arg, npy_intp C) {
    PyArrayObject *raw = NULL, *wide = NULL, *a = NULL;
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be an integer array (C, 2), got None", fn, arg);
        return NULL;
    }
    raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (raw == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be an integer array (C, 2), got %.100s", fn, arg,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    int kind = PyArray_DESCR(raw)->kind;
    if (kind != 'i' && kind != 'u') {
        PyErr_Format(PyExc_TypeError,
                     "%s: %s must be an integer array (int32 preferred), got dtype %S%s", fn, arg,
                     (PyObject *)PyArray_DESCR(raw),
                     kind == 'f' ? " (real offsets: use active_shift)" : "");
        goto fail;
    }
    char expect[64];
    snprintf(expect, sizeof expect, "(C, 2) = (%lld, 2)", (long long)C);
    npy_intp want[2] = {C, 2};
    if (require_shape(raw, 2, want, fn, arg, expect)) goto fail;
    /* widen to int64 (uint64 to uint64) and check the range before narrowing */
    int unsigned64 = kind == 'u' && PyArray_ITEMSIZE(raw) == 8;
    wide = (PyArrayObject *)PyArray_FromAny((PyObject *)raw,
                                            PyArray_DescrFromType(unsigned64 ? NPY_UINT64 : NPY_INT64),
                                            0, 0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!wide) goto fail;
    for (npy_intp i = 0; i < 2 * C; i++) {
        if (unsigned64) {
            unsigned long long u = ((const npy_uint64 *)PyArray_DATA(wide))[i];
            if (u > (unsigned long long)INT32_MAX) {
                PyErr_Format(PyExc_ValueError, "%s: %s[%lld, %lld]=%llu: must fit int32", fn, arg,
                             (long long)(i / 2), (long long)(i % 2), u);
                goto fail;
            }
        } else {
            long long v = ((const npy_int64 *)PyArray_DATA(wide))[i];
            if (v < INT32_MIN || v > INT32_MAX) {
                PyErr_Format(PyExc_ValueError, "%s: %s[%lld, %lld]=%lld: must fit int32", fn, arg,
                             (long long)(i / 2), (long long)(i % 2), v);
                goto fail;
            }
        }
    }
    a = (PyArrayObject *)PyArray_FromAny((PyObject *)wide, PyArray_DescrFromType(NPY_INT32), 0, 0,
                                         NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
                                             NPY_ARRAY_FORCECAST,
                                         NULL);
fail:
    Py_XDECREF(raw); Py_XDECREF(wide);
    return a;
}

static PyObject *core_shift(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "offsets", "stride", NULL};
    const char *fn = "shift";
    PyObject *ox, *ooff, *ostride = NULL;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &ox, &ooff, &ostride) ||
        i64_arg(ostride, fn, "stride", &stride) || check_int_arg(stride, 1, fn, "stride"))
        return NULL;
    PyArrayObject *x = NULL, *off = NULL, *y = NULL;
    PyObject *ret = NULL;
    x = as_f32(ox, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    off = as_offsets_i32(ooff, fn, "offsets", PyArray_DIM(x, 1));
    if (!off) goto done;
    sal_shift_desc d = shift_desc_of(PyArray_DIMS(x), stride);
    sal_act ya;
    if (failed(m, sal_shift_check(&d, &ya), fn)) goto done;
    npy_intp dims[4];
    act_dims(ya, dims);
    y = new_empty(4, dims, NPY_FLOAT32);
    if (!y) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_shift_fwd(PyArray_DATA(y), PyArray_DATA(x), PyArray_DATA(off), &d));
    ret = take_result(m, s, fn, &y);
done:
    Py_XDECREF(x); Py_XDECREF(off); Py_XDECREF(y);
    return ret;
}
PyDoc_STRVAR(shift_doc,
    DOC("shift(x, offsets, stride=1)", " -> y",
        "Integer per-channel shift (SL, Wu et al.): y[n,c,Y,X] = x[n, c, stride*Y + dy_c,\n"
        "stride*X + dx_c], zero outside.  x (N, C, H, W) float32, offsets (C, 2) integer = (dy, dx),\n"
        "any magnitude -> y (N, C, (H-1)//stride+1, (W-1)//stride+1)."));

static PyObject *core_shift_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"grad_y", "offsets", "input_shape", "stride", NULL};
    const char *fn = "shift_backward";
    PyObject *ogy, *ooff, *oshape, *ostride = NULL;
    long long stride = 1;
    npy_intp xdims[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwlist, &ogy, &ooff, &oshape, &ostride) ||
        i64_arg(ostride, fn, "stride", &stride) || check_int_arg(stride, 1, fn, "stride") ||
        parse_shape4(oshape, fn, "input_shape", xdims))
        return NULL;
    PyArrayObject *gy = NULL, *off = NULL, *gx = NULL;
    PyObject *ret = NULL;
    gy = as_f32(ogy, fn, "grad_y", 4, "(N, C, Ho, Wo)");
    if (!gy) goto done;
    off = as_offsets_i32(ooff, fn, "offsets", xdims[1]);
    if (!off) goto done;
    sal_shift_desc d = shift_desc_of(xdims, stride);
    sal_act ya;
    if (failed(m, sal_shift_check(&d, &ya), fn) ||
        require_grad_y(gy, ya, fn, "(N, C, (H-1)//stride+1, (W-1)//stride+1)"))
        goto done;
    gx = new_array(4, xdims, NPY_FLOAT32);
    if (!gx) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_shift_bwd(PyArray_DATA(gx), PyArray_DATA(gy), PyArray_DATA(off), &d));
    ret = take_result(m, s, fn, &gx);
done:
    Py_XDECREF(gy); Py_XDECREF(off); Py_XDECREF(gx);
    return ret;
}
PyDoc_STRVAR(shift_backward_doc,
    DOC("shift_backward(grad_y, offsets, input_shape, stride=1)", " -> grad_x",
        "The adjoint of shift: grad_x (input_shape) from grad_y = dL/dy."));

static PyObject *core_default_shift_offsets(PyObject *m, PyObject *arg) {
    const char *fn = "default_shift_offsets";
    long long c = 0;
    if (i64_arg(arg, fn, "C", &c) || check_int_arg(c, 1, fn, "C")) return NULL;
    if (c > (long long)(NPY_MAX_INTP / 8)) {
        PyErr_Format(PyExc_ValueError, "default_shift_offsets: C=%lld: too large (C*2 int32 "
                     "values overflow the address space)", c);
        return NULL;
    }
    npy_intp dims[2] = {(npy_intp)c, 2};
    PyArrayObject *off = new_empty(2, dims, NPY_INT32);
    if (off && failed(m, sal_shift_default_offsets(PyArray_DATA(off), c), fn)) Py_CLEAR(off);
    return (PyObject *)off;
}
PyDoc_STRVAR(default_shift_offsets_doc,
    DOC("default_shift_offsets(C)", " -> offsets",
        "The fixed 3x3 assignment of Wu et al. as int32 (C, 2) = (dy, dx): for c < 9*(C//9),\n"
        "dx = c%3 - 1, dy = (c//3)%3 - 1; the last C%9 channels are not shifted."));

/* ---- ASL: active shift --------------------------------------------------------------------- */

/* (x, offsets, [grad_y,] stride) in float32 (fast) or float64 (reference) */
typedef struct {
    PyArrayObject *x, *off, *gy;
    sal_shift_desc d;
    sal_act y;
} ashift_args;

static void ashift_args_free(ashift_args *a) {
    Py_XDECREF(a->x); Py_XDECREF(a->off); Py_XDECREF(a->gy);
}

static int ashift_args_parse(PyObject *m, ashift_args *a, PyObject *args, PyObject *kw,
                             int typenum, const char *fn, int backward) {
    static char *kw_fwd[] = {"x", "offsets", "stride", NULL};
    static char *kw_bwd[] = {"x", "offsets", "grad_y", "stride", NULL};
    PyObject *ox, *ooff, *ogy = NULL, *ostride = NULL;
    long long stride = 1;
    memset(a, 0, sizeof *a);
    int ok = backward
                 ? PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kw_bwd, &ox, &ooff, &ogy, &ostride)
                 : PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kw_fwd, &ox, &ooff, &ostride);
    if (!ok || i64_arg(ostride, fn, "stride", &stride) || check_int_arg(stride, 1, fn, "stride"))
        return -1;
    a->x = as_real(ox, typenum, fn, "x", 4, "(N, C, H, W)");
    if (!a->x) return -1;
    a->off = as_real(ooff, typenum, fn, "offsets", 2, "(C, 2)");
    if (!a->off) return -1;
    char expect[64];
    snprintf(expect, sizeof expect, "(C, 2) = (%lld, 2)", (long long)PyArray_DIM(a->x, 1));
    npy_intp want[2] = {PyArray_DIM(a->x, 1), 2};
    if (require_shape(a->off, 2, want, fn, "offsets", expect)) return -1;
    for (npy_intp i = 0; i < 2 * want[0]; i++) {
        double v = typenum == NPY_FLOAT32 ? ((const float *)PyArray_DATA(a->off))[i]
                                          : ((const double *)PyArray_DATA(a->off))[i];
        if (!isfinite(v)) {
            char buf[32];
            snprintf(buf, sizeof buf, "%g", v);
            PyErr_Format(PyExc_ValueError, "%s: offsets[%lld, %lld]=%s: must be finite", fn,
                         (long long)(i / 2), (long long)(i % 2), buf);
            return -1;
        }
    }
    a->d = shift_desc_of(PyArray_DIMS(a->x), stride);
    if (failed(m, sal_shift_check(&a->d, &a->y), fn)) return -1;
    if (backward) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, "(N, C, Ho, Wo)");
        if (!a->gy || require_grad_y(a->gy, a->y, fn, "(N, C, Ho, Wo)")) return -1;
    }
    return 0;
}

static PyObject *ashift_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                                const char *fn) {
    ashift_args a;
    PyArrayObject *y = NULL;
    PyObject *ret = NULL;
    if (ashift_args_parse(m, &a, args, kw, typenum, fn, 0)) goto done;
    npy_intp dims[4];
    act_dims(a.y, dims);
    y = new_empty(4, dims, typenum);
    if (!y) goto done;
    void *ys = PyArray_DATA(y), *xs = PyArray_DATA(a.x), *offs = PyArray_DATA(a.off);
    sal_status s;
    CALL_TYPED(s, typenum, sal_ashift_fwd(ys, xs, offs, &a.d),
               sal_ref_ashift_fwd_f64(ys, xs, offs, &a.d));
    ret = take_result(m, s, fn, &y);
done:
    Py_XDECREF(y);
    ashift_args_free(&a);
    return ret;
}

static PyObject *ashift_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                                 const char *fn) {
    ashift_args a;
    PyArrayObject *gx = NULL, *goff = NULL;
    PyObject *ret = NULL;
    if (ashift_args_parse(m, &a, args, kw, typenum, fn, 1)) goto done;
    gx = new_array(4, PyArray_DIMS(a.x), typenum);
    goff = new_array(2, PyArray_DIMS(a.off), typenum);
    if (!gx || !goff) goto done;
    void *gxs = PyArray_DATA(gx), *goffs = PyArray_DATA(goff), *gys = PyArray_DATA(a.gy),
         *xs = PyArray_DATA(a.x), *offs = PyArray_DATA(a.off);
    sal_status s;
    CALL_TYPED(s, typenum, sal_ashift_bwd(gxs, goffs, gys, xs, offs, &a.d),
               sal_ref_ashift_bwd_f64(gxs, goffs, gys, xs, offs, &a.d));
    if (failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(NN)", gx, goff);
    gx = goff = NULL;
done:
    Py_XDECREF(gx); Py_XDECREF(goff);
    ashift_args_free(&a);
    return ret;
}

WRAP(active_shift, ashift_forward, NPY_FLOAT32)
PyDoc_STRVAR(active_shift_doc,
    DOC("active_shift(x, offsets, stride=1)", " -> y",
        "Active shift (ASL, Jeon & Kim): y[n,c,Y,X] = bilinear sample of x[n,c] at\n"
        "(stride*Y + alpha_c, stride*X + beta_c), zero outside.  offsets (C, 2) float32 =\n"
        "(alpha, beta) = (dy, dx), finite.  Integer offsets give exactly shift(x, offsets)."));

WRAP(active_shift_backward, ashift_backward, NPY_FLOAT32)
PyDoc_STRVAR(active_shift_backward_doc,
    DOC("active_shift_backward(x, offsets, grad_y, stride=1)", " -> (grad_x, grad_offsets)",
        "Gradients of active_shift: grad_x (N, C, H, W) and the raw bilinear derivatives\n"
        "grad_offsets (C, 2) (right derivative at integer offsets; no normalisation)."));

WRAP(ref_active_shift_f64, ashift_forward, NPY_FLOAT64)
PyDoc_STRVAR(ref_active_shift_f64_doc,
    DOC("ref_active_shift_f64(x, offsets, stride=1)", " -> y",
        "Naive float64 reference (tests)."));

WRAP(ref_active_shift_backward_f64, ashift_backward, NPY_FLOAT64)
PyDoc_STRVAR(ref_active_shift_backward_f64_doc,
    DOC("ref_active_shift_backward_f64(x, offsets, grad_y, stride=1)", " -> (grad_x, grad_offsets)",
        "Naive float64 reference (tests)."));

static PyObject *core_normalize_shift_grad(PyObject *m, PyObject *arg) {
    const char *fn = "normalize_shift_grad";
    PyArrayObject *g = as_f32(arg, fn, "grad_offsets", 2, "(C, 2)"), *out = NULL;
    if (!g) return NULL;
    npy_intp want[2] = {-1, 2};
    if (!require_shape(g, 2, want, fn, "grad_offsets", "(C, 2)") &&
        (out = (PyArrayObject *)PyArray_NewCopy(g, NPY_CORDER)) != NULL &&
        failed(m, sal_ashift_normalize_grad(PyArray_DATA(out), PyArray_DIM(out, 0)), fn))
        Py_CLEAR(out);
    Py_DECREF(g);
    return (PyObject *)out;
}
PyDoc_STRVAR(normalize_shift_grad_doc,
    DOC("normalize_shift_grad(grad_offsets)", " -> array",
        "Each channel's (d/dalpha, d/dbeta) scaled to unit length (zero rows stay zero), as the\n"
        "reference ASL training does before its update.  Returns a new float32 (C, 2) array."));

/* ---- SAL -------------------------------------------------------------------------------------- */

/* (x, w, logits, beta, [grad_y,] stride, padding, hard, mask) */
typedef struct {
    PyArrayObject *x, *w, *a, *gy, *mask;
    sal_sal_desc d;
    sal_act y;
} sal_args;

static void sal_args_free(sal_args *a) {
    Py_XDECREF(a->x); Py_XDECREF(a->w); Py_XDECREF(a->a); Py_XDECREF(a->gy); Py_XDECREF(a->mask);
}

/* mask=None or a real/bool array of the logits' shape -> float32 0/1 (a copy), or NULL */
static int mask_arg(PyObject *om, PyArrayObject *logits, const char *fn, PyArrayObject **out) {
    *out = NULL;
    if (om == NULL || om == Py_None) return 0;
    PyArrayObject *mk = (PyArrayObject *)PyArray_FROMANY(om, NPY_FLOAT32, 0, 0,
                                                         NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!mk) return -1;
    int nd = PyArray_NDIM(logits);
    if (PyArray_NDIM(mk) != nd ||
        memcmp(PyArray_DIMS(mk), PyArray_DIMS(logits), (size_t)nd * sizeof(npy_intp)) != 0) {
        char got[96], want[96];
        shape_str(got, sizeof got, mk);
        shape_str(want, sizeof want, logits);
        PyErr_Format(PyExc_ValueError, "%s: mask must have the logits' shape %s, got %s", fn,
                     want, got);
        Py_DECREF(mk);
        return -1;
    }
    *out = mk;
    return 0;
}

/* tap_threshold: omitted -> SAL_TAP_THRESHOLD_DEFAULT; a real number in [0, 1], else a
 * ValueError that names the value (non-numeric ones included) */
static int tap_threshold_arg(PyObject *obj, const char *fn, double *out) {
    *out = SAL_TAP_THRESHOLD_DEFAULT;
    if (obj == NULL) return 0;
    double v = -1.0;
    if (!PyBool_Check(obj) && !PyComplex_Check(obj) && !PyUnicode_Check(obj) &&
        !PyBytes_Check(obj) && obj != Py_None)
        v = PyFloat_AsDouble(obj);
    if (PyBool_Check(obj) || PyComplex_Check(obj) || PyUnicode_Check(obj) ||
        PyBytes_Check(obj) || obj == Py_None || (v == -1.0 && PyErr_Occurred())) {
        PyErr_Clear();
        char def[32];
        snprintf(def, sizeof def, "%g", SAL_TAP_THRESHOLD_DEFAULT);
        PyErr_Format(PyExc_ValueError, "%s: tap_threshold=%R: must be a real number in [0, 1] "
                     "(0: dense; default %s)", fn, obj, def);
        return -1;
    }
    if (sal_tap_threshold_check(fn, v) != SAL_OK) {
        PyErr_SetString(PyExc_ValueError, sal_last_error());
        return -1;
    }
    *out = v;
    return 0;
}

static int sal_args_parse(PyObject *m, sal_args *a, PyObject *args, PyObject *kw, int typenum,
                          const char *fn, int backward) {
    /* the float32 kernels take tap_threshold; the float64 references are always dense */
    static char *kw_fwd32[] = {"x", "w", "logits", "beta", "stride", "padding", "hard", "mask",
                               "tap_threshold", NULL};
    static char *kw_bwd32[] = {"x",      "w",       "logits", "beta", "grad_y",
                               "stride", "padding", "hard",   "mask", "tap_threshold", NULL};
    static char *kw_fwd64[] = {"x", "w", "logits", "beta", "stride", "padding", "hard", "mask",
                               NULL};
    static char *kw_bwd64[] = {"x",      "w",       "logits", "beta", "grad_y",
                               "stride", "padding", "hard",   "mask", NULL};
    PyObject *ox, *ow, *oa, *obeta, *ogy = NULL, *ostride = NULL, *opadding = NULL;
    PyObject *omask = Py_None, *othr = NULL;
    double beta = 0.0, thr = 0.0;
    long long stride = 1, padding = 1;
    int hard = 0;
    memset(a, 0, sizeof *a);
    const int f32 = typenum == NPY_FLOAT32;
    char **kw_fwd = f32 ? kw_fwd32 : kw_fwd64, **kw_bwd = f32 ? kw_bwd32 : kw_bwd64;
    int ok = backward ? PyArg_ParseTupleAndKeywords(args, kw, f32 ? "OOOOO|OOpOO" : "OOOOO|OOpO",
                                                    kw_bwd, &ox, &ow, &oa, &obeta, &ogy, &ostride,
                                                    &opadding, &hard, &omask, &othr)
                      : PyArg_ParseTupleAndKeywords(args, kw, f32 ? "OOOO|OOpOO" : "OOOO|OOpO",
                                                    kw_fwd, &ox, &ow, &oa, &obeta, &ostride,
                                                    &opadding, &hard, &omask, &othr);
    if (!ok || f64_arg(obeta, fn, "beta", &beta) || i64_arg(ostride, fn, "stride", &stride) ||
        i64_arg(opadding, fn, "padding", &padding) || check_int_arg(stride, 1, fn, "stride") ||
        (f32 && tap_threshold_arg(othr, fn, &thr)))
        return -1;
    if (padding != 1) {
        PyErr_Format(PyExc_ValueError,
                     "%s: padding=%lld: must be 1 (SAL uses 3x3 kernels with padding 1)", fn,
                     padding);
        return -1;
    }
    if (check_beta(beta, fn)) return -1;
    a->x = as_real(ox, typenum, fn, "x", 4, "(N, C, H, W)");
    if (!a->x) return -1;
    a->w = as_real(ow, typenum, fn, "w", 4, "(O, C, 3, 3)");
    if (!a->w) return -1;
    npy_intp C = PyArray_DIM(a->x, 1), O = PyArray_DIM(a->w, 0);
    char expect[96];
    snprintf(expect, sizeof expect, "(O, C=%lld, 3, 3)", (long long)C);
    npy_intp want_w[4] = {-1, C, 3, 3};
    if (require_shape(a->w, 4, want_w, fn, "w", expect)) return -1;
    a->a = as_real(oa, typenum, fn, "logits", 3, "(C_out or 1, C_in, 9)");
    if (!a->a) return -1;
    npy_intp A0 = PyArray_DIM(a->a, 0);
    snprintf(expect, sizeof expect, "(C_out=%lld or 1, C_in=%lld, 9)", (long long)O, (long long)C);
    npy_intp want_a[3] = {A0 == 1 ? 1 : O, C, 9};
    if (require_shape(a->a, 3, want_a, fn, "logits", expect)) return -1;
    a->d = (sal_sal_desc){act_nchw(a->x), O, stride, padding, A0 == 1 && O > 1, hard != 0, beta,
                          NULL, sal_get_num_threads(), thr};  /* scratch: for these threads */
    if (mask_arg(omask, a->a, fn, &a->mask)) return -1;
    if (a->mask) a->d.mask = PyArray_DATA(a->mask);
    if (failed(m, sal_sal_check(&a->d, &a->y), fn)) return -1;
    if (backward) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, "(N, O, Ho, Wo)");
        if (!a->gy || require_grad_y(a->gy, a->y, fn, "(N, O, Ho, Wo)")) return -1;
    }
    return 0;
}

/* float32 scratch for the fast kernels; none (a 1-float block) for the reference */
static float *sal_scratch(const sal_args *a, int typenum) {
    return scratch_alloc(typenum == NPY_FLOAT32 ? sal_sal_scratch(&a->d) : 0);
}

static PyObject *sal_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                             const char *fn) {
    sal_args a;
    PyArrayObject *y = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sal_args_parse(m, &a, args, kw, typenum, fn, 0)) goto done;
    npy_intp dims[4];
    act_dims(a.y, dims);
    y = new_empty(4, dims, typenum);
    if (!y || !(scratch = sal_scratch(&a, typenum))) goto done;
    void *ys = PyArray_DATA(y), *xs = PyArray_DATA(a.x), *ws = PyArray_DATA(a.w),
         *as = PyArray_DATA(a.a);
    sal_status s;
    CALL_TYPED(s, typenum, sal_sal_fwd(ys, xs, ws, as, &a.d, scratch),
               sal_ref_sal_fwd_f64(ys, xs, ws, as, &a.d));
    ret = take_result(m, s, fn, &y);
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(y);
    sal_args_free(&a);
    return ret;
}

static PyObject *sal_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                              const char *fn) {
    sal_args a;
    PyArrayObject *gx = NULL, *gw = NULL, *ga = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sal_args_parse(m, &a, args, kw, typenum, fn, 1)) goto done;
    gx = new_array(4, PyArray_DIMS(a.x), typenum);
    gw = new_array(4, PyArray_DIMS(a.w), typenum);
    ga = new_array(3, PyArray_DIMS(a.a), typenum);
    if (!gx || !gw || !ga || !(scratch = sal_scratch(&a, typenum))) goto done;
    void *gxs = PyArray_DATA(gx), *gws = PyArray_DATA(gw), *gas = PyArray_DATA(ga),
         *gys = PyArray_DATA(a.gy), *xs = PyArray_DATA(a.x), *ws = PyArray_DATA(a.w),
         *as = PyArray_DATA(a.a);
    sal_status s;
    CALL_TYPED(s, typenum, sal_sal_bwd(gxs, gws, gas, gys, xs, ws, as, &a.d, scratch),
               sal_ref_sal_bwd_f64(gxs, gws, gas, gys, xs, ws, as, &a.d));
    if (failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(NNN)", gx, gw, ga);
    gx = gw = ga = NULL;
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(gx); Py_XDECREF(gw); Py_XDECREF(ga);
    sal_args_free(&a);
    return ret;
}

WRAP(sal_conv2d, sal_forward, NPY_FLOAT32)
PyDoc_STRVAR(sal_conv2d_doc,
    DOC("sal_conv2d(x, w, logits, beta, stride=1, padding=1, hard=False, mask=None, tap_threshold=TAP_THRESHOLD_DEFAULT)", " -> y",
        "Shift attention layer: p = softmax(beta * a / std(a)) over the 9 positions of each\n"
        "slice (unbiased std, no mean subtraction; std 0 or beta 0 give 1/9), hard: p > 0.5;\n"
        "y = conv2d(x, p * w, stride, padding 1).  x (N, C, H, W), w (O, C, 3, 3), logits\n"
        "(O, C, 9) unshared or (1, C, 9) shared, beta finite >= 0 -> y (N, O, Ho, Wo).\n"
        "mask: None, or 0/1 of the logits' shape: the allowed positions of each slice (>= 1);\n"
        "the softmax runs over the allowed positions only (std(a) stays that of all 9), p = 0\n"
        "elsewhere.  tap_threshold t in [0, 1]: the taps with p < t * p_max of their slice are\n"
        "skipped (sparse kernels, when that is faster); 0: the dense path.  The default 2**-27\n"
        "keeps the skipped weight of a slice below float32's unit roundoff times p_max, so the\n"
        "result equals the dense one to rounding (libsal/include/sal/attention.h)."));

WRAP(sal_conv2d_backward, sal_backward, NPY_FLOAT32)
PyDoc_STRVAR(sal_conv2d_backward_doc,
    DOC("sal_conv2d_backward(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False, mask=None, tap_threshold=TAP_THRESHOLD_DEFAULT)", " -> (grad_x, grad_w, grad_logits)",
        "Gradients of sal_conv2d given grad_y = dL/dy.  grad_logits has the shape of logits;\n"
        "it is zero where std(a) = 0, for beta = 0 and in hard mode (a step function); masked\n"
        "positions get the std term only.  tap_threshold as in sal_conv2d: skipped taps get\n"
        "no weight gradient (p * dL/dW_eff is below float32 resolution there) and their\n"
        "logits the std term of the gradient."));

WRAP(ref_sal_conv2d_f64, sal_forward, NPY_FLOAT64)
PyDoc_STRVAR(ref_sal_conv2d_f64_doc,
    DOC("ref_sal_conv2d_f64(x, w, logits, beta, stride=1, padding=1, hard=False, mask=None)", " -> y",
        "Naive float64 reference (tests)."));

WRAP(ref_sal_conv2d_backward_f64, sal_backward, NPY_FLOAT64)
PyDoc_STRVAR(ref_sal_conv2d_backward_f64_doc,
    DOC("ref_sal_conv2d_backward_f64(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False, mask=None)", " -> (grad_x, grad_w, grad_logits)",
        "Naive float64 reference (tests): full softmax and std Jacobians."));

static PyObject *sal_probs(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                           const char *fn) {
    static char *kwlist[] = {"logits", "beta", "hard", "mask", NULL};
    PyObject *oa, *obeta, *omask = Py_None;
    double beta = 0.0;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pO", kwlist, &oa, &obeta, &hard, &omask) ||
        f64_arg(obeta, fn, "beta", &beta) || check_beta(beta, fn))
        return NULL;
    PyArrayObject *a = as_real(oa, typenum, fn, "logits", -1, "(..., 9)"), *p = NULL, *mk = NULL;
    PyObject *ret = NULL;
    if (!a || mask_arg(omask, a, fn, &mk)) goto done;
    int nd = PyArray_NDIM(a);
    if (nd < 1 || PyArray_DIM(a, nd - 1) != 9) {
        char sh[96];
        shape_str(sh, sizeof sh, a);
        PyErr_Format(PyExc_ValueError, "%s: logits must have shape (..., 9), e.g. (C_out or 1, "
                     "C_in, 9), got %s", fn, nd ? sh : "()");
        goto done;
    }
    p = new_empty(nd, PyArray_DIMS(a), typenum);
    if (!p) goto done;
    int64_t l = (int64_t)(PyArray_SIZE(a) / 9);
    const float *md = data_or_null(mk);
    sal_status s;
    CALL_TYPED(s, typenum,
               sal_attn_probs_masked(PyArray_DATA(p), PyArray_DATA(a), md, l, beta, hard),
               sal_ref_attn_probs_masked_f64(PyArray_DATA(p), PyArray_DATA(a), md, l, beta, hard));
    ret = take_result(m, s, fn, &p);
done:
    Py_XDECREF(mk); Py_XDECREF(a); Py_XDECREF(p);
    return ret;
}

WRAP(sal_probs, sal_probs, NPY_FLOAT32)
PyDoc_STRVAR(sal_probs_doc,
    DOC("sal_probs(logits, beta, hard=False, mask=None)", " -> p",
        "The attention probabilities of sal_conv2d: p = softmax(beta * a / std(a)) over the last\n"
        "axis (size 9), same shape as logits; hard: (p > 0.5) as 0/1.  mask (0/1, the logits'\n"
        "shape): softmax over the allowed positions only, p = 0 elsewhere (see sal_conv2d)."));

WRAP(ref_sal_probs_f64, sal_probs, NPY_FLOAT64)
PyDoc_STRVAR(ref_sal_probs_f64_doc,
    DOC("ref_sal_probs_f64(logits, beta, hard=False, mask=None)", " -> p",
        "Naive float64 reference (tests)."));


static PyObject *core_sal_kept_taps(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"logits", "beta", "tap_threshold", "hard", "mask", NULL};
    const char *fn = "sal_kept_taps";
    PyObject *oa, *obeta, *othr = NULL, *omask = Py_None;
    double beta = 0.0, thr = 0.0;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OpO", kwlist, &oa, &obeta, &othr, &hard,
                                     &omask) ||
        f64_arg(obeta, fn, "beta", &beta) || check_beta(beta, fn) ||
        tap_threshold_arg(othr, fn, &thr))
        return NULL;
    if (thr == 0.0) {
        PyErr_Format(PyExc_ValueError, "%s: tap_threshold=0: the dense path keeps every tap; "
                     "pass a threshold > 0", fn);
        return NULL;
    }
    PyArrayObject *a = as_real(oa, NPY_FLOAT32, fn, "logits", -1, "(..., 9)");
    PyArrayObject *k = NULL, *mk = NULL;
    PyObject *ret = NULL;
    if (!a || mask_arg(omask, a, fn, &mk)) goto done;
    int nd = PyArray_NDIM(a);
    if (nd < 1 || PyArray_DIM(a, nd - 1) != 9 || PyArray_SIZE(a) == 0) {
        char sh[96];
        shape_str(sh, sizeof sh, a);
        PyErr_Format(PyExc_ValueError, "%s: logits must have shape (..., 9) with at least one "
                     "slice, got %s", fn, nd ? sh : "()");
        goto done;
    }
    k = new_empty(nd, PyArray_DIMS(a), NPY_BOOL);
    if (!k) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_attn_kept(PyArray_DATA(k), PyArray_DATA(a), data_or_null(mk),
                                (int64_t)(PyArray_SIZE(a) / 9), beta, hard, thr, NULL));
    ret = take_result(m, s, fn, &k);
done:
    Py_XDECREF(mk); Py_XDECREF(a); Py_XDECREF(k);
    return ret;
}
PyDoc_STRVAR(sal_kept_taps_doc,
    DOC("sal_kept_taps(logits, beta, tap_threshold=TAP_THRESHOLD_DEFAULT, hard=False, mask=None)", " -> kept",
        "The taps sal_conv2d keeps at this threshold: a bool array of the logits' shape (..., 9),\n"
        "True where p > 0 and p >= tap_threshold * max(p) over the slice (p as in sal_probs)."));

static PyObject *core_get_taps_path(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    return PyUnicode_FromString(sal_get_taps_path());
}
PyDoc_STRVAR(get_taps_path_doc,
    DOC("get_taps_path()", " -> str",
        "The path SAL calls with tap_threshold > 0 take: 'auto', 'sparse' or 'dense'."));

static PyObject *core_set_taps_path(PyObject *m, PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "set_taps_path: name must be a str, got %.80s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    if (sal_set_taps_path(name) != SAL_OK) {
        PyErr_SetString(PyExc_ValueError, sal_last_error());
        return NULL;
    }
    Py_RETURN_NONE;
}
PyDoc_STRVAR(set_taps_path_doc,
    DOC("set_taps_path(name)", "",
        "Make SAL calls with tap_threshold > 0 take the 'sparse' or the 'dense' path always, or\n"
        "choose by measured cost ('auto', the default); process-wide, for tests and benchmarks."));

PyMethodDef core_shift_methods[] = {
    KW_METHOD("shift", core_shift, shift_doc),
    KW_METHOD("shift_backward", core_shift_backward, shift_backward_doc),
    {"default_shift_offsets", core_default_shift_offsets, METH_O, default_shift_offsets_doc},
    KW_METHOD("active_shift", core_active_shift, active_shift_doc),
    KW_METHOD("active_shift_backward", core_active_shift_backward, active_shift_backward_doc),
    KW_METHOD("ref_active_shift_f64", core_ref_active_shift_f64, ref_active_shift_f64_doc),
    KW_METHOD("ref_active_shift_backward_f64", core_ref_active_shift_backward_f64,
              ref_active_shift_backward_f64_doc),
    {"normalize_shift_grad", core_normalize_shift_grad, METH_O, normalize_shift_grad_doc},
    KW_METHOD("sal_conv2d", core_sal_conv2d, sal_conv2d_doc),
    KW_METHOD("sal_conv2d_backward", core_sal_conv2d_backward, sal_conv2d_backward_doc),
    KW_METHOD("ref_sal_conv2d_f64", core_ref_sal_conv2d_f64, ref_sal_conv2d_f64_doc),
    KW_METHOD("ref_sal_conv2d_backward_f64", core_ref_sal_conv2d_backward_f64,
              ref_sal_conv2d_backward_f64_doc),
    KW_METHOD("sal_probs", core_sal_probs, sal_probs_doc),
    KW_METHOD("sal_kept_taps", core_sal_kept_taps, sal_kept_taps_doc),
    {"get_taps_path", core_get_taps_path, METH_NOARGS, get_taps_path_doc},
    {"set_taps_path", core_set_taps_path, METH_O, set_taps_path_doc},
    KW_METHOD("ref_sal_probs_f64", core_ref_sal_probs_f64, ref_sal_probs_f64_doc),
    {NULL, NULL, 0, NULL}};
