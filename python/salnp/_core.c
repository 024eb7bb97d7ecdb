/* salnp._core: the only file that knows CPython and NumPy.
 *
 * Every function converts its array arguments to float32, C-contiguous and aligned
 * (a copy where needed: inputs are never written), checks shapes with messages that
 * name the function and the argument, allocates its outputs and scratch with the GIL
 * held, and releases the GIL only around the pure C work. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "sal/sal.h"

#ifndef SAL_VERSION_STR
#define SAL_VERSION_STR SAL_VERSION
#endif

typedef struct {
    PyObject *error; /* salnp.SalError: failures that are not the caller's fault */
} core_state;

static core_state *get_state(PyObject *module) { return (core_state *)PyModule_GetState(module); }

/* ---- argument helpers ---------------------------------------------------- */

/* "(4, 3, 8)" */
static void shape_str(char *buf, size_t n, PyArrayObject *a) {
    size_t len = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < PyArray_NDIM(a) && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, i ? ", %lld" : "%lld",
                                (long long)PyArray_DIM(a, i));
    if (len < n) snprintf(buf + len, n - len, PyArray_NDIM(a) == 1 ? ",)" : ")");
}

/* New reference to obj as a float (NPY_FLOAT or NPY_DOUBLE) array with ndim dimensions,
 * C-contiguous, aligned and native byte order; a copy when obj is not already that.
 * Integer, bool, complex, object and string data are refused: a float tensor is required. */
static PyArrayObject *as_real(PyObject *obj, int typenum, const char *fn, const char *arg,
                              int ndim, const char *dims_doc) {
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be an array, got None", fn, arg);
        return NULL;
    }
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (raw == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a real floating-point array, got %.100s", fn,
                     arg, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    int kind = PyArray_DESCR(raw)->kind;
    if (kind != 'f') {
        PyErr_Format(PyExc_TypeError,
                     "%s: %s must be a real floating-point array (float32 preferred), got dtype %S",
                     fn, arg, (PyObject *)PyArray_DESCR(raw));
        Py_DECREF(raw);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(raw) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be a %d-D array %s, got %d-D", fn, arg, ndim,
                     dims_doc, PyArray_NDIM(raw));
        Py_DECREF(raw);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)raw, PyArray_DescrFromType(typenum), 0, 0,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_NOTSWAPPED | NPY_ARRAY_FORCECAST,
        NULL);
    Py_DECREF(raw);
    if (a == NULL) return NULL;
    for (int i = 0; i < PyArray_NDIM(a); i++)
        if (PyArray_DIM(a, i) == 0) {
            char sh[96];
            shape_str(sh, sizeof sh, a);
            PyErr_Format(PyExc_ValueError, "%s: %s has shape %s: every dimension of %s must be >= 1",
                         fn, arg, sh, dims_doc);
            Py_DECREF(a);
            return NULL;
        }
    return a;
}

static PyArrayObject *as_f32(PyObject *obj, const char *fn, const char *arg, int ndim,
                             const char *dims_doc) {
    return as_real(obj, NPY_FLOAT32, fn, arg, ndim, dims_doc);
}

/* ValueError "fn: arg must have shape EXPECTED, got (..)" when a's shape != want */
static int require_shape(PyArrayObject *a, int nd, const npy_intp *want, const char *fn,
                         const char *arg, const char *expected) {
    int ok = PyArray_NDIM(a) == nd;
    for (int i = 0; ok && i < nd; i++) ok = want[i] < 0 || PyArray_DIM(a, i) == want[i];
    if (ok) return 0;
    char sh[96];
    shape_str(sh, sizeof sh, a);
    PyErr_Format(PyExc_ValueError, "%s: %s must have shape %s, got %s", fn, arg, expected, sh);
    return -1;
}

/* zero-filled (gradients accumulate into it) or uninitialised (forward outputs) */
static PyArrayObject *new_array(int nd, const npy_intp *dims, int typenum) {
    return (PyArrayObject *)PyArray_ZEROS(nd, (npy_intp *)dims, typenum, 0);
}
static PyArrayObject *new_empty(int nd, const npy_intp *dims, int typenum) {
    return (PyArrayObject *)PyArray_EMPTY(nd, (npy_intp *)dims, typenum, 0);
}

/* Turn a libsal status into the matching Python exception. */
static PyObject *raise_status(PyObject *module, sal_status s, const char *fn) {
    const char *msg = sal_last_error();
    switch (s) {
    case SAL_EINVAL:
    case SAL_ENONFINITE:
        PyErr_Format(PyExc_ValueError, "%s: %s", fn, msg);
        break;
    case SAL_EOVERFLOW:
        PyErr_Format(PyExc_ValueError, "%s: %s (sizes too large)", fn, msg);
        break;
    case SAL_ENOMEM:
        PyErr_Format(PyExc_MemoryError, "%s: out of memory: %s", fn, msg);
        break;
    default:
        PyErr_Format(get_state(module)->error, "%s: %s: %s", fn, sal_status_name(s), msg);
    }
    return NULL;
}

static int check_int_arg(long long v, long long lo, const char *fn, const char *arg) {
    if (v >= lo) return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s=%lld: must be >= %lld", fn, arg, v, lo);
    return -1;
}

static float *scratch_alloc(size_t nfloats) {
    float *p = (float *)PyMem_RawMalloc(nfloats ? nfloats * sizeof(float) : 1);
    if (p == NULL) PyErr_NoMemory();
    return p;
}

/* ---- library state --------------------------------------------------------- */

static PyObject *core_blas_info(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    sal_blas_info bi;
    sal_status s = sal_blas_query(&bi);
    if (s != SAL_OK) return raise_status(m, s, "blas_info");
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:s,s:O,s:O,s:i}", "blis_version", bi.blis_version,
                         "flavour", bi.flavour, "arch", bi.arch, "arch_source", bi.arch_source,
                         "cpu_features", bi.cpu_features, "verified",
                         bi.verified ? Py_True : Py_False, "generic",
                         bi.generic ? Py_True : Py_False, "threads", sal_get_num_threads());
}

static PyObject *core_set_num_threads(PyObject *m, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n=%ld: must be in [1, 1024]", n);
        return NULL;
    }
    sal_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *core_get_num_threads(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(sal_get_num_threads());
}

/* ---- convolution -------------------------------------------------------------- */

/* Parses (x, w, [grad_y,] stride, padding) into arrays and a descriptor; typenum picks
 * float32 (the fast kernels) or float64 (the reference twins). */
typedef struct {
    PyArrayObject *x, *w, *gy;
    sal_conv_desc d;
    sal_act y;
} conv_args;

static void conv_args_free(conv_args *a) {
    Py_XDECREF(a->x);
    Py_XDECREF(a->w);
    Py_XDECREF(a->gy);
}

static int conv_args_parse(conv_args *a, const char *fn, int typenum, PyObject *ox, PyObject *ow,
                           PyObject *ogy, long long stride, long long padding) {
    memset(a, 0, sizeof *a);
    if (check_int_arg(stride, 1, fn, "stride") || check_int_arg(padding, 0, fn, "padding"))
        return -1;
    a->x = as_real(ox, typenum, fn, "x", 4, "(N, C, H, W)");
    if (!a->x) return -1;
    a->w = as_real(ow, typenum, fn, "w", 4, "(O, C, K, K)");
    if (!a->w) return -1;
    npy_intp C = PyArray_DIM(a->x, 1), K = PyArray_DIM(a->w, 2);
    char expect[96];
    snprintf(expect, sizeof expect, "(O, C=%lld, K, K) with a square kernel", (long long)C);
    npy_intp want_w[4] = {-1, C, K, K};
    if (require_shape(a->w, 4, want_w, fn, "w", expect)) return -1;
    a->d = (sal_conv_desc){{PyArray_DIM(a->x, 0), C, PyArray_DIM(a->x, 2), PyArray_DIM(a->x, 3),
                            SAL_NCHW},
                           PyArray_DIM(a->w, 0), K, stride, padding};
    if (sal_conv_check(&a->d, &a->y) != SAL_OK) {
        PyErr_Format(PyExc_ValueError, "%s: %s", fn, sal_last_error());
        return -1;
    }
    if (ogy) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, "(N, O, Ho, Wo)");
        if (!a->gy) return -1;
        npy_intp want[4] = {a->y.n, a->y.c, a->y.h, a->y.w};
        snprintf(expect, sizeof expect, "(N, O, Ho, Wo) = (%lld, %lld, %lld, %lld)",
                 (long long)a->y.n, (long long)a->y.c, (long long)a->y.h, (long long)a->y.w);
        if (require_shape(a->gy, 4, want, fn, "grad_y", expect)) return -1;
    }
    return 0;
}

static PyObject *conv_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                              const char *fn) {
    static char *kwlist[] = {"x", "w", "stride", "padding", NULL};
    PyObject *ox, *ow;
    long long stride = 1, padding = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|LL", kwlist, &ox, &ow, &stride, &padding))
        return NULL;
    conv_args a;
    PyArrayObject *y = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, fn, typenum, ox, ow, NULL, stride, padding)) goto done;
    npy_intp dims[4] = {a.y.n, a.y.c, a.y.h, a.y.w};
    y = new_empty(4, dims, typenum);
    if (!y) goto done;
    sal_status s;
    if (typenum == NPY_FLOAT32) {
        scratch = scratch_alloc(sal_conv_scratch(&a.d));
        if (!scratch) goto done;
        Py_BEGIN_ALLOW_THREADS
        s = sal_conv_fwd(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d, scratch);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS
        s = sal_ref_conv_fwd_f64(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d);
        Py_END_ALLOW_THREADS
    }
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(y);
    conv_args_free(&a);
    return ret;
}

static PyObject *conv_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                               const char *fn) {
    static char *kwlist[] = {"x", "w", "grad_y", "stride", "padding", NULL};
    PyObject *ox, *ow, *ogy;
    long long stride = 1, padding = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|LL", kwlist, &ox, &ow, &ogy, &stride,
                                     &padding))
        return NULL;
    conv_args a;
    PyArrayObject *gx = NULL, *gw = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, fn, typenum, ox, ow, ogy, stride, padding)) goto done;
    gx = new_array(4, PyArray_DIMS(a.x), typenum);
    gw = new_array(4, PyArray_DIMS(a.w), typenum);
    if (!gx || !gw) goto done;
    sal_status s;
    if (typenum == NPY_FLOAT32) {
        scratch = scratch_alloc(sal_conv_scratch(&a.d));
        if (!scratch) goto done;
        Py_BEGIN_ALLOW_THREADS
        s = sal_conv_bwd(PyArray_DATA(gx), PyArray_DATA(gw), PyArray_DATA(a.gy), PyArray_DATA(a.x),
                         PyArray_DATA(a.w), &a.d, scratch);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS
        s = sal_ref_conv_bwd_f64(PyArray_DATA(gx), PyArray_DATA(gw), PyArray_DATA(a.gy),
                                 PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d);
        Py_END_ALLOW_THREADS
    }
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = Py_BuildValue("(NN)", gx, gw);
    gx = gw = NULL;
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(gx);
    Py_XDECREF(gw);
    conv_args_free(&a);
    return ret;
}

static PyObject *core_conv2d(PyObject *m, PyObject *args, PyObject *kw) {
    return conv_forward(m, args, kw, NPY_FLOAT32, "conv2d");
}
static PyObject *core_conv2d_backward(PyObject *m, PyObject *args, PyObject *kw) {
    return conv_backward(m, args, kw, NPY_FLOAT32, "conv2d_backward");
}
static PyObject *core_ref_conv2d_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return conv_forward(m, args, kw, NPY_FLOAT64, "ref_conv2d_f64");
}
static PyObject *core_ref_conv2d_backward_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return conv_backward(m, args, kw, NPY_FLOAT64, "ref_conv2d_backward_f64");
}

/* ---- shift family: SL shift, ASL active shift, SAL ------------------------------- */

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
        int ok;
        long long v;
        if (unsigned64) {
            unsigned long long u = ((const npy_uint64 *)PyArray_DATA(wide))[i];
            ok = u <= (unsigned long long)INT32_MAX;
            v = (long long)(ok ? u : 0);
            if (!ok) {
                PyErr_Format(PyExc_ValueError, "%s: %s[%lld, %lld]=%llu: must fit int32", fn, arg,
                             (long long)(i / 2), (long long)(i % 2), u);
                goto fail;
            }
        } else {
            v = ((const npy_int64 *)PyArray_DATA(wide))[i];
            ok = v >= INT32_MIN && v <= INT32_MAX;
            if (!ok) {
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
    Py_XDECREF(raw);
    Py_XDECREF(wide);
    return a;
}

/* (N, C, H, W) from a sequence of four ints >= 1 */
static int parse_shape4(PyObject *obj, const char *fn, const char *arg, npy_intp out[4]) {
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != 4) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a sequence of 4 ints (N, C, H, W)", fn, arg);
        Py_XDECREF(seq);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: %s[%d] must be an int, got %.100s", fn, arg, i,
                         Py_TYPE(item)->tp_name);
            Py_DECREF(seq);
            return -1;
        }
        if (v < 1) {
            PyErr_Format(PyExc_ValueError, "%s: %s[%d]=%lld: must be >= 1", fn, arg, i, v);
            Py_DECREF(seq);
            return -1;
        }
        out[i] = (npy_intp)v;
    }
    Py_DECREF(seq);
    return 0;
}

static sal_shift_desc shift_desc_of(const npy_intp *xdims, long long stride) {
    return (sal_shift_desc){{xdims[0], xdims[1], xdims[2], xdims[3], SAL_NCHW}, stride};
}

/* grad_y must have shape (N, C, Ho, Wo) = y */
static int require_grad_y(PyArrayObject *gy, sal_act y, const char *fn, const char *what) {
    char expect[96];
    npy_intp want[4] = {y.n, y.c, y.h, y.w};
    snprintf(expect, sizeof expect, "%s = (%lld, %lld, %lld, %lld)", what, (long long)y.n,
             (long long)y.c, (long long)y.h, (long long)y.w);
    return require_shape(gy, 4, want, fn, "grad_y", expect);
}

static PyObject *core_shift(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "offsets", "stride", NULL};
    const char *fn = "shift";
    PyObject *ox, *ooff;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|L", kwlist, &ox, &ooff, &stride)) return NULL;
    PyArrayObject *x = NULL, *off = NULL, *y = NULL;
    PyObject *ret = NULL;
    if (check_int_arg(stride, 1, fn, "stride")) goto done;
    x = as_f32(ox, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    off = as_offsets_i32(ooff, fn, "offsets", PyArray_DIM(x, 1));
    if (!off) goto done;
    sal_shift_desc d = shift_desc_of(PyArray_DIMS(x), stride);
    sal_act ya;
    sal_status s = sal_shift_check(&d, &ya);
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    npy_intp dims[4] = {ya.n, ya.c, ya.h, ya.w};
    y = new_empty(4, dims, NPY_FLOAT32);
    if (!y) goto done;
    Py_BEGIN_ALLOW_THREADS
    s = sal_shift_fwd(PyArray_DATA(y), PyArray_DATA(x), PyArray_DATA(off), &d);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(off);
    Py_XDECREF(y);
    return ret;
}

static PyObject *core_shift_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"grad_y", "offsets", "input_shape", "stride", NULL};
    const char *fn = "shift_backward";
    PyObject *ogy, *ooff, *oshape;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|L", kwlist, &ogy, &ooff, &oshape, &stride))
        return NULL;
    PyArrayObject *gy = NULL, *off = NULL, *gx = NULL;
    PyObject *ret = NULL;
    npy_intp xdims[4];
    if (check_int_arg(stride, 1, fn, "stride")) goto done;
    if (parse_shape4(oshape, fn, "input_shape", xdims)) goto done;
    gy = as_f32(ogy, fn, "grad_y", 4, "(N, C, Ho, Wo)");
    if (!gy) goto done;
    off = as_offsets_i32(ooff, fn, "offsets", xdims[1]);
    if (!off) goto done;
    sal_shift_desc d = shift_desc_of(xdims, stride);
    sal_act ya;
    sal_status s = sal_shift_check(&d, &ya);
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    if (require_grad_y(gy, ya, fn, "(N, C, (H-1)//stride+1, (W-1)//stride+1)")) goto done;
    gx = new_array(4, xdims, NPY_FLOAT32);
    if (!gx) goto done;
    Py_BEGIN_ALLOW_THREADS
    s = sal_shift_bwd(PyArray_DATA(gx), PyArray_DATA(gy), PyArray_DATA(off), &d);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)gx;
    gx = NULL;
done:
    Py_XDECREF(gy);
    Py_XDECREF(off);
    Py_XDECREF(gx);
    return ret;
}

static PyObject *core_default_shift_offsets(PyObject *m, PyObject *arg) {
    long long c = PyLong_AsLongLong(arg);
    if (c == -1 && PyErr_Occurred()) return NULL;
    if (check_int_arg(c, 1, "default_shift_offsets", "C")) return NULL;
    npy_intp dims[2] = {(npy_intp)c, 2};
    PyArrayObject *off = new_empty(2, dims, NPY_INT32);
    if (!off) return NULL;
    sal_status s = sal_shift_default_offsets(PyArray_DATA(off), c);
    if (s != SAL_OK) {
        Py_DECREF(off);
        return raise_status(m, s, "default_shift_offsets");
    }
    return (PyObject *)off;
}

/* active shift: (x, offsets, [grad_y,] stride) in float32 (fast) or float64 (reference) */
typedef struct {
    PyArrayObject *x, *off, *gy;
    sal_shift_desc d;
    sal_act y;
} ashift_args;

static void ashift_args_free(ashift_args *a) {
    Py_XDECREF(a->x);
    Py_XDECREF(a->off);
    Py_XDECREF(a->gy);
}

static int ashift_args_parse(PyObject *m, ashift_args *a, const char *fn, int typenum,
                             PyObject *ox, PyObject *ooff, PyObject *ogy, long long stride) {
    memset(a, 0, sizeof *a);
    if (check_int_arg(stride, 1, fn, "stride")) return -1;
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
    sal_status s = sal_shift_check(&a->d, &a->y);
    if (s != SAL_OK) { raise_status(m, s, fn); return -1; }
    if (ogy) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, "(N, C, Ho, Wo)");
        if (!a->gy) return -1;
        if (require_grad_y(a->gy, a->y, fn, "(N, C, Ho, Wo)")) return -1;
    }
    return 0;
}

static PyObject *ashift_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                                const char *fn) {
    static char *kwlist[] = {"x", "offsets", "stride", NULL};
    PyObject *ox, *ooff;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|L", kwlist, &ox, &ooff, &stride)) return NULL;
    ashift_args a;
    PyArrayObject *y = NULL;
    PyObject *ret = NULL;
    if (ashift_args_parse(m, &a, fn, typenum, ox, ooff, NULL, stride)) goto done;
    npy_intp dims[4] = {a.y.n, a.y.c, a.y.h, a.y.w};
    y = new_empty(4, dims, typenum);
    if (!y) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_FLOAT32)
        s = sal_ashift_fwd(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.off), &a.d);
    else
        s = sal_ref_ashift_fwd_f64(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.off), &a.d);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    Py_XDECREF(y);
    ashift_args_free(&a);
    return ret;
}

static PyObject *ashift_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                                 const char *fn) {
    static char *kwlist[] = {"x", "offsets", "grad_y", "stride", NULL};
    PyObject *ox, *ooff, *ogy;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|L", kwlist, &ox, &ooff, &ogy, &stride))
        return NULL;
    ashift_args a;
    PyArrayObject *gx = NULL, *goff = NULL;
    PyObject *ret = NULL;
    if (ashift_args_parse(m, &a, fn, typenum, ox, ooff, ogy, stride)) goto done;
    gx = new_array(4, PyArray_DIMS(a.x), typenum);
    goff = new_array(2, PyArray_DIMS(a.off), typenum);
    if (!gx || !goff) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_FLOAT32)
        s = sal_ashift_bwd(PyArray_DATA(gx), PyArray_DATA(goff), PyArray_DATA(a.gy),
                           PyArray_DATA(a.x), PyArray_DATA(a.off), &a.d);
    else
        s = sal_ref_ashift_bwd_f64(PyArray_DATA(gx), PyArray_DATA(goff), PyArray_DATA(a.gy),
                                   PyArray_DATA(a.x), PyArray_DATA(a.off), &a.d);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = Py_BuildValue("(NN)", gx, goff);
    gx = goff = NULL;
done:
    Py_XDECREF(gx);
    Py_XDECREF(goff);
    ashift_args_free(&a);
    return ret;
}

static PyObject *core_active_shift(PyObject *m, PyObject *args, PyObject *kw) {
    return ashift_forward(m, args, kw, NPY_FLOAT32, "active_shift");
}
static PyObject *core_active_shift_backward(PyObject *m, PyObject *args, PyObject *kw) {
    return ashift_backward(m, args, kw, NPY_FLOAT32, "active_shift_backward");
}
static PyObject *core_ref_active_shift_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return ashift_forward(m, args, kw, NPY_FLOAT64, "ref_active_shift_f64");
}
static PyObject *core_ref_active_shift_backward_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return ashift_backward(m, args, kw, NPY_FLOAT64, "ref_active_shift_backward_f64");
}

static PyObject *core_normalize_shift_grad(PyObject *m, PyObject *arg) {
    const char *fn = "normalize_shift_grad";
    PyArrayObject *g = as_f32(arg, fn, "grad_offsets", 2, "(C, 2)");
    if (!g) return NULL;
    PyObject *ret = NULL;
    npy_intp want[2] = {-1, 2};
    PyArrayObject *out = NULL;
    if (require_shape(g, 2, want, fn, "grad_offsets", "(C, 2)")) goto done;
    out = (PyArrayObject *)PyArray_NewCopy(g, NPY_CORDER);
    if (!out) goto done;
    sal_status s = sal_ashift_normalize_grad(PyArray_DATA(out), PyArray_DIM(out, 0));
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)out;
    out = NULL;
done:
    Py_DECREF(g);
    Py_XDECREF(out);
    return ret;
}

static int check_beta(double beta, const char *fn) {
    if (isfinite(beta) && beta >= 0.0) return 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%g", beta);
    PyErr_Format(PyExc_ValueError, "%s: beta=%s: must be finite and >= 0", fn, buf);
    return -1;
}

/* SAL: (x, w, logits, beta, [grad_y,] stride, padding, hard) */
typedef struct {
    PyArrayObject *x, *w, *a, *gy;
    sal_sal_desc d;
    sal_act y;
} sal_args;

static void sal_args_free(sal_args *a) {
    Py_XDECREF(a->x);
    Py_XDECREF(a->w);
    Py_XDECREF(a->a);
    Py_XDECREF(a->gy);
}

static int sal_args_parse(PyObject *m, sal_args *a, const char *fn, int typenum, PyObject *ox,
                          PyObject *ow, PyObject *oa, double beta, PyObject *ogy, long long stride,
                          long long padding, int hard) {
    memset(a, 0, sizeof *a);
    if (check_int_arg(stride, 1, fn, "stride")) return -1;
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
    a->d = (sal_sal_desc){{PyArray_DIM(a->x, 0), C, PyArray_DIM(a->x, 2), PyArray_DIM(a->x, 3),
                           SAL_NCHW},
                          O, stride, padding, A0 == 1 && O > 1, hard != 0, beta};
    sal_status s = sal_sal_check(&a->d, &a->y);
    if (s != SAL_OK) { raise_status(m, s, fn); return -1; }
    if (ogy) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, "(N, O, Ho, Wo)");
        if (!a->gy) return -1;
        if (require_grad_y(a->gy, a->y, fn, "(N, O, Ho, Wo)")) return -1;
    }
    return 0;
}

static PyObject *sal_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                             const char *fn) {
    static char *kwlist[] = {"x", "w", "logits", "beta", "stride", "padding", "hard", NULL};
    PyObject *ox, *ow, *oa;
    double beta;
    long long stride = 1, padding = 1;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOd|LLp", kwlist, &ox, &ow, &oa, &beta, &stride,
                                     &padding, &hard))
        return NULL;
    sal_args a;
    PyArrayObject *y = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sal_args_parse(m, &a, fn, typenum, ox, ow, oa, beta, NULL, stride, padding, hard))
        goto done;
    npy_intp dims[4] = {a.y.n, a.y.c, a.y.h, a.y.w};
    y = new_empty(4, dims, typenum);
    if (!y) goto done;
    sal_status s;
    if (typenum == NPY_FLOAT32) {
        scratch = scratch_alloc(sal_sal_scratch(&a.d));
        if (!scratch) goto done;
        Py_BEGIN_ALLOW_THREADS
        s = sal_sal_fwd(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), PyArray_DATA(a.a),
                        &a.d, scratch);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS
        s = sal_ref_sal_fwd_f64(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w),
                                PyArray_DATA(a.a), &a.d);
        Py_END_ALLOW_THREADS
    }
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(y);
    sal_args_free(&a);
    return ret;
}

static PyObject *sal_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                              const char *fn) {
    static char *kwlist[] = {"x",      "w",       "logits", "beta", "grad_y",
                             "stride", "padding", "hard",   NULL};
    PyObject *ox, *ow, *oa, *ogy;
    double beta;
    long long stride = 1, padding = 1;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOdO|LLp", kwlist, &ox, &ow, &oa, &beta, &ogy,
                                     &stride, &padding, &hard))
        return NULL;
    sal_args a;
    PyArrayObject *gx = NULL, *gw = NULL, *ga = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sal_args_parse(m, &a, fn, typenum, ox, ow, oa, beta, ogy, stride, padding, hard))
        goto done;
    gx = new_array(4, PyArray_DIMS(a.x), typenum);
    gw = new_array(4, PyArray_DIMS(a.w), typenum);
    ga = new_array(3, PyArray_DIMS(a.a), typenum);
    if (!gx || !gw || !ga) goto done;
    sal_status s;
    if (typenum == NPY_FLOAT32) {
        scratch = scratch_alloc(sal_sal_scratch(&a.d));
        if (!scratch) goto done;
        Py_BEGIN_ALLOW_THREADS
        s = sal_sal_bwd(PyArray_DATA(gx), PyArray_DATA(gw), PyArray_DATA(ga), PyArray_DATA(a.gy),
                        PyArray_DATA(a.x), PyArray_DATA(a.w), PyArray_DATA(a.a), &a.d, scratch);
        Py_END_ALLOW_THREADS
    } else {
        Py_BEGIN_ALLOW_THREADS
        s = sal_ref_sal_bwd_f64(PyArray_DATA(gx), PyArray_DATA(gw), PyArray_DATA(ga),
                                PyArray_DATA(a.gy), PyArray_DATA(a.x), PyArray_DATA(a.w),
                                PyArray_DATA(a.a), &a.d);
        Py_END_ALLOW_THREADS
    }
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = Py_BuildValue("(NNN)", gx, gw, ga);
    gx = gw = ga = NULL;
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(gx);
    Py_XDECREF(gw);
    Py_XDECREF(ga);
    sal_args_free(&a);
    return ret;
}

static PyObject *core_sal_conv2d(PyObject *m, PyObject *args, PyObject *kw) {
    return sal_forward(m, args, kw, NPY_FLOAT32, "sal_conv2d");
}
static PyObject *core_sal_conv2d_backward(PyObject *m, PyObject *args, PyObject *kw) {
    return sal_backward(m, args, kw, NPY_FLOAT32, "sal_conv2d_backward");
}
static PyObject *core_ref_sal_conv2d_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return sal_forward(m, args, kw, NPY_FLOAT64, "ref_sal_conv2d_f64");
}
static PyObject *core_ref_sal_conv2d_backward_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return sal_backward(m, args, kw, NPY_FLOAT64, "ref_sal_conv2d_backward_f64");
}

static PyObject *sal_probs_impl(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                                const char *fn) {
    static char *kwlist[] = {"logits", "beta", "hard", NULL};
    PyObject *oa;
    double beta;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Od|p", kwlist, &oa, &beta, &hard)) return NULL;
    if (check_beta(beta, fn)) return NULL;
    PyArrayObject *a = as_real(oa, typenum, fn, "logits", -1, "(..., 9)"), *p = NULL;
    if (!a) return NULL;
    PyObject *ret = NULL;
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
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_FLOAT32)
        s = sal_attn_probs(PyArray_DATA(p), PyArray_DATA(a), l, beta, hard);
    else
        s = sal_ref_attn_probs_f64(PyArray_DATA(p), PyArray_DATA(a), l, beta, hard);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)p;
    p = NULL;
done:
    Py_DECREF(a);
    Py_XDECREF(p);
    return ret;
}

static PyObject *core_sal_probs(PyObject *m, PyObject *args, PyObject *kw) {
    return sal_probs_impl(m, args, kw, NPY_FLOAT32, "sal_probs");
}
static PyObject *core_ref_sal_probs_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return sal_probs_impl(m, args, kw, NPY_FLOAT64, "ref_sal_probs_f64");
}

/* ---- module ------------------------------------------------------------------- */

#define KW (PyCFunction)(void (*)(void))
static PyMethodDef core_methods[] = {
    {"blas_info", core_blas_info, METH_NOARGS,
     "blas_info() -> dict\n--\n\nBLIS version, flavour, sub-configuration and how it was chosen."},
    {"set_num_threads", core_set_num_threads, METH_O,
     "set_num_threads(n)\n--\n\nThreads used by libsal's loops and by BLIS (n >= 1)."},
    {"get_num_threads", core_get_num_threads, METH_NOARGS,
     "get_num_threads() -> int\n--\n\nThreads used by libsal."},
    {"conv2d", KW core_conv2d, METH_VARARGS | METH_KEYWORDS,
     "conv2d(x, w, stride=1, padding=0) -> y\n--\n\n"
     "Cross-correlation as torch.nn.functional.conv2d, no bias.\n"
     "x (N, C, H, W), w (O, C, K, K) -> y (N, O, Ho, Wo), float32."},
    {"conv2d_backward", KW core_conv2d_backward, METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward(x, w, grad_y, stride=1, padding=0) -> (grad_x, grad_w)\n--\n\n"
     "Gradients of conv2d with respect to x and w, given grad_y = dL/dy."},
    {"ref_conv2d_f64", KW core_ref_conv2d_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_conv2d_f64(x, w, stride=1, padding=0) -> y\n--\n\nNaive float64 reference (tests)."},
    {"ref_conv2d_backward_f64", KW core_ref_conv2d_backward_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_conv2d_backward_f64(x, w, grad_y, stride=1, padding=0) -> (grad_x, grad_w)\n--\n\n"
     "Naive float64 reference (tests)."},
    {"shift", KW core_shift, METH_VARARGS | METH_KEYWORDS,
     "shift(x, offsets, stride=1) -> y\n--\n\n"
     "Integer per-channel shift (SL, Wu et al.): y[n,c,Y,X] = x[n, c, stride*Y + dy_c,\n"
     "stride*X + dx_c], zero outside.  x (N, C, H, W) float32, offsets (C, 2) integer = (dy, dx),\n"
     "any magnitude -> y (N, C, (H-1)//stride+1, (W-1)//stride+1)."},
    {"shift_backward", KW core_shift_backward, METH_VARARGS | METH_KEYWORDS,
     "shift_backward(grad_y, offsets, input_shape, stride=1) -> grad_x\n--\n\n"
     "The adjoint of shift: grad_x (input_shape) from grad_y = dL/dy."},
    {"default_shift_offsets", core_default_shift_offsets, METH_O,
     "default_shift_offsets(C) -> offsets\n--\n\n"
     "The fixed 3x3 assignment of Wu et al. as int32 (C, 2) = (dy, dx): for c < 9*(C//9),\n"
     "dx = c%3 - 1, dy = (c//3)%3 - 1; the last C%9 channels are not shifted."},
    {"active_shift", KW core_active_shift, METH_VARARGS | METH_KEYWORDS,
     "active_shift(x, offsets, stride=1) -> y\n--\n\n"
     "Active shift (ASL, Jeon & Kim): y[n,c,Y,X] = bilinear sample of x[n,c] at\n"
     "(stride*Y + alpha_c, stride*X + beta_c), zero outside.  offsets (C, 2) float32 =\n"
     "(alpha, beta) = (dy, dx), finite.  Integer offsets give exactly shift(x, offsets)."},
    {"active_shift_backward", KW core_active_shift_backward, METH_VARARGS | METH_KEYWORDS,
     "active_shift_backward(x, offsets, grad_y, stride=1) -> (grad_x, grad_offsets)\n--\n\n"
     "Gradients of active_shift: grad_x (N, C, H, W) and the raw bilinear derivatives\n"
     "grad_offsets (C, 2) (right derivative at integer offsets; no normalisation)."},
    {"normalize_shift_grad", core_normalize_shift_grad, METH_O,
     "normalize_shift_grad(grad_offsets) -> array\n--\n\n"
     "Each channel's (d/dalpha, d/dbeta) scaled to unit length (zero rows stay zero), as the\n"
     "reference ASL training does before its update.  Returns a new float32 (C, 2) array."},
    {"sal_conv2d", KW core_sal_conv2d, METH_VARARGS | METH_KEYWORDS,
     "sal_conv2d(x, w, logits, beta, stride=1, padding=1, hard=False) -> y\n--\n\n"
     "Shift attention layer: p = softmax(beta * a / std(a)) over the 9 positions of each\n"
     "slice (unbiased std, no mean subtraction; std 0 or beta 0 give 1/9), hard: p > 0.5;\n"
     "y = conv2d(x, p * w, stride, padding 1).  x (N, C, H, W), w (O, C, 3, 3), logits\n"
     "(O, C, 9) unshared or (1, C, 9) shared, beta finite >= 0 -> y (N, O, Ho, Wo)."},
    {"sal_conv2d_backward", KW core_sal_conv2d_backward, METH_VARARGS | METH_KEYWORDS,
     "sal_conv2d_backward(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False)\n"
     "-> (grad_x, grad_w, grad_logits)\n--\n\n"
     "Gradients of sal_conv2d given grad_y = dL/dy.  grad_logits has the shape of logits;\n"
     "it is zero where std(a) = 0, for beta = 0 and in hard mode (a step function)."},
    {"sal_probs", KW core_sal_probs, METH_VARARGS | METH_KEYWORDS,
     "sal_probs(logits, beta, hard=False) -> p\n--\n\n"
     "The attention probabilities of sal_conv2d: p = softmax(beta * a / std(a)) over the last\n"
     "axis (size 9), same shape as logits; hard: (p > 0.5) as 0/1."},
    {"ref_active_shift_f64", KW core_ref_active_shift_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_active_shift_f64(x, offsets, stride=1) -> y\n--\n\nNaive float64 reference (tests)."},
    {"ref_active_shift_backward_f64", KW core_ref_active_shift_backward_f64,
     METH_VARARGS | METH_KEYWORDS,
     "ref_active_shift_backward_f64(x, offsets, grad_y, stride=1) -> (grad_x, grad_offsets)\n--\n\n"
     "Naive float64 reference (tests)."},
    {"ref_sal_conv2d_f64", KW core_ref_sal_conv2d_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_sal_conv2d_f64(x, w, logits, beta, stride=1, padding=1, hard=False) -> y\n--\n\n"
     "Naive float64 reference (tests)."},
    {"ref_sal_conv2d_backward_f64", KW core_ref_sal_conv2d_backward_f64,
     METH_VARARGS | METH_KEYWORDS,
     "ref_sal_conv2d_backward_f64(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False)\n"
     "-> (grad_x, grad_w, grad_logits)\n--\n\n"
     "Naive float64 reference (tests): full softmax and std Jacobians."},
    {"ref_sal_probs_f64", KW core_ref_sal_probs_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_sal_probs_f64(logits, beta, hard=False) -> p\n--\n\nNaive float64 reference (tests)."},
    {NULL, NULL, 0, NULL}};

static int core_exec(PyObject *m) {
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    core_state *st = get_state(m);
    st->error = PyErr_NewExceptionWithDoc(
        "salnp.SalError", "A libsal failure that is not an argument error (BLIS, I/O, format).",
        PyExc_RuntimeError, NULL);
    if (!st->error) return -1;
    if (PyModule_AddObjectRef(m, "SalError", st->error) < 0) return -1;
    if (PyModule_AddStringConstant(m, "__version__", SAL_VERSION_STR) < 0) return -1;
    sal_status s = sal_init();
    if (s != SAL_OK) {
        PyErr_Format(st->error, "libsal initialisation failed: %s", sal_last_error());
        return -1;
    }
    return 0;
}

static int core_traverse(PyObject *m, visitproc visit, void *arg) {
    Py_VISIT(get_state(m)->error);
    return 0;
}

static int core_clear(PyObject *m) {
    Py_CLEAR(get_state(m)->error);
    return 0;
}

static PyModuleDef_Slot core_slots[] = {{Py_mod_exec, core_exec}, {0, NULL}};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", "libsal kernels on NumPy arrays (see salnp.ops).",
    sizeof(core_state), core_methods, core_slots, core_traverse, core_clear, NULL};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
