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
#include "sal/net.h"
#include "sal/count.h"
#include "sal/infer.h"

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

/* *out = obj as a signed 64-bit integer (sizes, strides, pads); obj NULL keeps *out (an
 * omitted optional argument).  TypeError for a non-integer, ValueError naming fn and arg
 * for one outside int64 (PyArg's "L" raised a bare OverflowError there). */
static int i64_arg(PyObject *obj, const char *fn, const char *arg, long long *out) {
    if (obj == NULL) return 0;
    PyObject *i = PyNumber_Index(obj);
    if (i == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be an integer, got %.100s", fn, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: %s=%S: must be in [-2**63, 2**63)", fn, arg, i);
        Py_DECREF(i);
        return -1;
    }
    Py_DECREF(i);
    *out = v;
    return 0;
}

/* *out = obj as a double (betas, rates, eps); obj NULL keeps *out.  Any real number
 * (int, float, NumPy scalar); TypeError naming fn and arg otherwise, ValueError for an int
 * too large for a double (PyArg's "d" raised messages without the argument's name). */
static int f64_arg(PyObject *obj, const char *fn, const char *arg, double *out) {
    if (obj == NULL) return 0;
    if (PyComplex_Check(obj) || PyUnicode_Check(obj) || PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a real number, got %.100s", fn, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        int overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
        PyErr_Clear();
        if (overflow)
            PyErr_Format(PyExc_ValueError, "%s: %s=%R: too large for a double", fn, arg, obj);
        else
            PyErr_Format(PyExc_TypeError, "%s: %s must be a real number, got %.100s", fn, arg,
                         Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = v;
    return 0;
}

/* O& converter: layout="NCHW" (default) or "CNHW" (channel-major, arrays are (C, N, H, W)) */
static int layout_converter(PyObject *obj, void *out) {
    const char *name = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (name && strcmp(name, "NCHW") == 0) *(sal_layout *)out = SAL_NCHW;
    else if (name && strcmp(name, "CNHW") == 0) *(sal_layout *)out = SAL_CNHW;
    else {
        PyErr_Format(PyExc_ValueError, "layout=%R: must be 'NCHW' or 'CNHW'", obj);
        return 0;
    }
    return 1;
}

/* array dims of an activation: (N, C, H, W) or, channel-major, (C, N, H, W) */
static void act_dims(sal_act a, npy_intp dims[4]) {
    dims[0] = a.layout == SAL_NCHW ? a.n : a.c;
    dims[1] = a.layout == SAL_NCHW ? a.c : a.n;
    dims[2] = a.h;
    dims[3] = a.w;
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
    long long n = 0;
    if (i64_arg(arg, "set_num_threads", "n", &n)) return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n=%lld: must be in [1, 1024]", n);
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
                           PyObject *ogy, long long stride, long long padding, sal_layout L) {
    memset(a, 0, sizeof *a);
    if (check_int_arg(stride, 1, fn, "stride") || check_int_arg(padding, 0, fn, "padding"))
        return -1;
    a->x = as_real(ox, typenum, fn, "x", 4, L == SAL_NCHW ? "(N, C, H, W)" : "(C, N, H, W)");
    if (!a->x) return -1;
    a->w = as_real(ow, typenum, fn, "w", 4, "(O, C, K, K)");
    if (!a->w) return -1;
    const int ci = L == SAL_NCHW ? 1 : 0;
    npy_intp C = PyArray_DIM(a->x, ci), K = PyArray_DIM(a->w, 2);
    char expect[96];
    snprintf(expect, sizeof expect, "(O, C=%lld, K, K) with a square kernel", (long long)C);
    npy_intp want_w[4] = {-1, C, K, K};
    if (require_shape(a->w, 4, want_w, fn, "w", expect)) return -1;
    a->d = (sal_conv_desc){{PyArray_DIM(a->x, 1 - ci), C, PyArray_DIM(a->x, 2), PyArray_DIM(a->x, 3),
                            L},
                           PyArray_DIM(a->w, 0), K, stride, padding,
                           sal_get_num_threads()};  /* scratch is sized for these threads */
    if (sal_conv_check(&a->d, &a->y) != SAL_OK) {
        PyErr_Format(PyExc_ValueError, "%s: %s", fn, sal_last_error());
        return -1;
    }
    if (ogy) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, "like y");
        if (!a->gy) return -1;
        npy_intp want[4];
        act_dims(a->y, want);
        snprintf(expect, sizeof expect, "%s = (%lld, %lld, %lld, %lld)",
                 L == SAL_NCHW ? "(N, O, Ho, Wo)" : "(O, N, Ho, Wo)", (long long)want[0],
                 (long long)want[1], (long long)want[2], (long long)want[3]);
        if (require_shape(a->gy, 4, want, fn, "grad_y", expect)) return -1;
    }
    return 0;
}

static PyObject *conv_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                              const char *fn) {
    static char *kwlist[] = {"x", "w", "stride", "padding", "layout", NULL};
    PyObject *ox, *ow, *ostride = NULL, *opadding = NULL;
    long long stride = 1, padding = 0;
    sal_layout L = SAL_NCHW;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO$O&", kwlist, &ox, &ow, &ostride, &opadding,
                                     layout_converter, &L) ||
        i64_arg(ostride, fn, "stride", &stride) || i64_arg(opadding, fn, "padding", &padding))
        return NULL;
    conv_args a;
    PyArrayObject *y = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, fn, typenum, ox, ow, NULL, stride, padding, L)) goto done;
    npy_intp dims[4];
    act_dims(a.y, dims);
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
    static char *kwlist[] = {"x", "w", "grad_y", "stride", "padding", "layout", NULL};
    PyObject *ox, *ow, *ogy, *ostride = NULL, *opadding = NULL;
    long long stride = 1, padding = 0;
    sal_layout L = SAL_NCHW;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OO$O&", kwlist, &ox, &ow, &ogy, &ostride,
                                     &opadding, layout_converter, &L) ||
        i64_arg(ostride, fn, "stride", &stride) || i64_arg(opadding, fn, "padding", &padding))
        return NULL;
    conv_args a;
    PyArrayObject *gx = NULL, *gw = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, fn, typenum, ox, ow, ogy, stride, padding, L)) goto done;
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

/* ---- data ------------------------------------------------------------------------ */

/* *out = obj as an unsigned 64-bit integer (seeds, epochs); ValueError naming fn and arg */
static int u64_arg(PyObject *obj, const char *fn, const char *arg, uint64_t *out) {
    PyObject *i = PyNumber_Index(obj);
    if (i == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be an integer, got %.100s", fn, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(i);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: %s=%S: must be in [0, 2**64)", fn, arg, i);
        Py_DECREF(i);
        return -1;
    }
    Py_DECREF(i);
    *out = v;
    return 0;
}

/* New reference: obj as a fresh 1-D int64 array of length >= 1 (always a copy, so no
 * other thread can change it while the GIL is released); only integer dtypes accepted */
static PyArrayObject *as_index(PyObject *obj, const char *fn, const char *arg) {
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (raw == NULL) return NULL;
    int kind = PyArray_DESCR(raw)->kind;
    if ((kind != 'i' && kind != 'u') || PyArray_NDIM(raw) != 1 || PyArray_DIM(raw, 0) < 1) {
        PyErr_Format(kind != 'i' && kind != 'u' ? PyExc_TypeError : PyExc_ValueError,
                     "%s: %s must be a non-empty 1-D integer array, got dtype %S with %d "
                     "dimension(s)",
                     fn, arg, (PyObject *)PyArray_DESCR(raw), PyArray_NDIM(raw));
        Py_DECREF(raw);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)raw, PyArray_DescrFromType(NPY_INT64), 1, 1,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_NOTSWAPPED | NPY_ARRAY_ENSURECOPY |
            NPY_ARRAY_FORCECAST,
        NULL);
    if (a != NULL && kind == 'u' && PyArray_ITEMSIZE(raw) == 8) {
        /* uint64 values above INT64_MAX wrapped to negative: refuse them */
        const int64_t *p = PyArray_DATA(a);
        for (npy_intp k = 0; k < PyArray_DIM(a, 0); k++)
            if (p[k] < 0) {
                PyErr_Format(PyExc_ValueError, "%s: %s[%lld]: value too large", fn, arg,
                             (long long)k);
                Py_DECREF(a);
                a = NULL;
                break;
            }
    }
    Py_DECREF(raw);
    return a;
}

static int layout_arg(const char *s, const char *fn, sal_layout *out) {
    if (strcmp(s, "NCHW") == 0) { *out = SAL_NCHW; return 0; }
    if (strcmp(s, "CNHW") == 0) { *out = SAL_CNHW; return 0; }
    PyErr_Format(PyExc_ValueError, "%s: layout='%s': must be 'NCHW' or 'CNHW'", fn, s);
    return -1;
}

/* Format errors of the parsers: SalError carrying the parser's message (the caller,
 * salnp.data, adds the file name). */
static PyObject *raise_format(PyObject *m, sal_status s, const char *fn) {
    if (s == SAL_EFORMAT) {
        PyErr_Format(get_state(m)->error, "%s", sal_last_error());
        return NULL;
    }
    return raise_status(m, s, fn);
}

static PyObject *core_parse_cifar(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"data", "num_classes", NULL};
    const char *fn = "_parse_cifar";
    Py_buffer buf = {0};
    PyObject *onc, *ret = NULL, *seq = NULL;
    PyArrayObject *img = NULL, *lab = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*O", kwlist, &buf, &onc)) return NULL;
    int nc[SAL_CIFAR_MAX_LABELS];
    seq = PySequence_Fast(onc, "_parse_cifar: num_classes must be a sequence of ints");
    if (!seq) goto done;
    Py_ssize_t L = PySequence_Fast_GET_SIZE(seq);
    if (L < 1 || L > SAL_CIFAR_MAX_LABELS) {
        PyErr_Format(PyExc_ValueError, "%s: num_classes has %zd entries: must have 1 to %d (one "
                     "per label byte)", fn, L, SAL_CIFAR_MAX_LABELS);
        goto done;
    }
    for (Py_ssize_t k = 0; k < L; k++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, k));
        if (v == -1 && PyErr_Occurred()) goto done;
        if (v < 1 || v > 256) {
            PyErr_Format(PyExc_ValueError, "%s: num_classes[%zd]=%ld: must be in [1, 256]", fn, k, v);
            goto done;
        }
        nc[k] = (int)v;
    }
    int64_t n;
    sal_status s = sal_cifar_count((size_t)buf.len, (int)L, &n);
    if (s != SAL_OK) { raise_format(m, s, fn); goto done; }
    npy_intp di[4] = {n, SAL_CIFAR_C, SAL_CIFAR_H, SAL_CIFAR_W}, dl[2] = {n, L};
    img = new_empty(4, di, NPY_UINT8);
    lab = new_empty(2, dl, NPY_INT32);
    if (!img || !lab) goto done;
    Py_BEGIN_ALLOW_THREADS
    s = sal_cifar_parse(buf.buf, (size_t)buf.len, (int)L, nc, PyArray_DATA(img),
                        (size_t)PyArray_SIZE(img), PyArray_DATA(lab), (size_t)PyArray_SIZE(lab));
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_format(m, s, fn); goto done; }
    ret = Py_BuildValue("(NN)", img, lab);
    img = lab = NULL;
done:
    Py_XDECREF(seq);
    Py_XDECREF(img);
    Py_XDECREF(lab);
    PyBuffer_Release(&buf);
    return ret;
}

static PyObject *core_parse_idx(PyObject *m, PyObject *arg) {
    const char *fn = "_parse_idx";
    Py_buffer buf = {0};
    PyObject *ret = NULL;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    sal_idx_info info;
    sal_status s = sal_idx_header(buf.buf, (size_t)buf.len, &info);
    if (s != SAL_OK) { raise_format(m, s, fn); goto done; }
    npy_intp dims[SAL_IDX_MAX_DIMS];
    for (int k = 0; k < info.ndim; k++) dims[k] = (npy_intp)info.dims[k];
    PyArrayObject *a = new_empty(info.ndim, dims, NPY_UINT8);
    if (!a) goto done;
    Py_BEGIN_ALLOW_THREADS
    s = sal_idx_parse_u8(buf.buf, (size_t)buf.len, &info, PyArray_DATA(a), (size_t)PyArray_SIZE(a));
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { Py_DECREF(a); raise_format(m, s, fn); goto done; }
    ret = (PyObject *)a;
done:
    PyBuffer_Release(&buf);
    return ret;
}

static PyObject *core_permutation(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"n", "seed", "epoch", NULL};
    const char *fn = "_permutation";
    long long n = 0;
    PyObject *on, *oseed, *oepoch;
    uint64_t seed, epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &on, &oseed, &oepoch)) return NULL;
    if (i64_arg(on, fn, "n", &n) || check_int_arg(n, 1, fn, "n") || u64_arg(oseed, fn, "seed", &seed) ||
        u64_arg(oepoch, fn, "epoch", &epoch))
        return NULL;
    npy_intp dims[1] = {(npy_intp)n};
    PyArrayObject *p = new_empty(1, dims, NPY_INT64);
    if (!p) return NULL;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_permutation(PyArray_DATA(p), n, seed, epoch);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { Py_DECREF(p); return raise_status(m, s, fn); }
    return (PyObject *)p;
}

static PyObject *core_batch_augment(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"index", "pad", "flip", "seed", "epoch", NULL};
    const char *fn = "_batch_augment";
    PyObject *oindex, *opad, *oseed, *oepoch;
    long long pad = 0;
    int flip;
    uint64_t seed, epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOpOO", kwlist, &oindex, &opad, &flip, &oseed,
                                     &oepoch))
        return NULL;
    if (i64_arg(opad, fn, "pad", &pad) || u64_arg(oseed, fn, "seed", &seed) ||
        u64_arg(oepoch, fn, "epoch", &epoch))
        return NULL;
    PyArrayObject *idx = as_index(oindex, fn, "index");
    if (!idx) return NULL;
    const float zero = 0.0f, one = 1.0f;
    sal_batch_desc d = {1, 1, 1, &zero, &one, pad, flip, seed, epoch, SAL_NCHW};
    npy_intp dims[2] = {PyArray_DIM(idx, 0), 3};
    PyArrayObject *aug = new_empty(2, dims, NPY_INT32);
    if (!aug) { Py_DECREF(idx); return NULL; }
    sal_status s = sal_batch_augment(PyArray_DATA(aug), PyArray_DATA(idx), dims[0], &d);
    Py_DECREF(idx);
    if (s != SAL_OK) { Py_DECREF(aug); return raise_status(m, s, fn); }
    return (PyObject *)aug;
}

static PyObject *core_make_batch(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", "index", "mean", "std", "pad", "flip", "seed",
                             "epoch", "layout", "out", NULL};
    const char *fn = "_make_batch";
    PyObject *oimg, *oindex, *omean, *ostd, *opad = NULL, *oseed = NULL, *oepoch = NULL,
             *oout = Py_None;
    long long pad = 0;
    int flip = 0;
    const char *layout_s = "NCHW";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|OpOOsO", kwlist, &oimg, &oindex, &omean,
                                     &ostd, &opad, &flip, &oseed, &oepoch, &layout_s, &oout))
        return NULL;
    uint64_t seed = 0, epoch = 0;
    sal_layout layout;
    if (i64_arg(opad, fn, "pad", &pad) || (oseed && u64_arg(oseed, fn, "seed", &seed)) ||
        (oepoch && u64_arg(oepoch, fn, "epoch", &epoch)) || layout_arg(layout_s, fn, &layout) ||
        check_int_arg(pad, 0, fn, "pad"))
        return NULL;
    PyArrayObject *img = NULL, *idx = NULL, *mean = NULL, *std = NULL, *out = NULL;
    PyObject *ret = NULL;
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(oimg);
    if (!raw) goto done;
    if (PyArray_TYPE(raw) != NPY_UINT8 || PyArray_NDIM(raw) != 4) {
        PyErr_Format(PyArray_TYPE(raw) != NPY_UINT8 ? PyExc_TypeError : PyExc_ValueError,
                     "%s: images must be a 4-D uint8 array (N, C, H, W), got dtype %S with %d "
                     "dimension(s)",
                     fn, (PyObject *)PyArray_DESCR(raw), PyArray_NDIM(raw));
        Py_DECREF(raw);
        goto done;
    }
    img = (PyArrayObject *)PyArray_FromAny((PyObject *)raw, PyArray_DescrFromType(NPY_UINT8), 4, 4,
                                           NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    Py_DECREF(raw);
    if (!img) goto done;
    idx = as_index(oindex, fn, "index");
    if (!idx) goto done;
    const npy_intp N = PyArray_DIM(img, 0), C = PyArray_DIM(img, 1), H = PyArray_DIM(img, 2),
                   W = PyArray_DIM(img, 3), B = PyArray_DIM(idx, 0);
    if (N < 1 || C < 1 || H < 1 || W < 1) {
        PyErr_Format(PyExc_ValueError, "%s: images has a zero-size dimension", fn);
        goto done;
    }
    char expect[64];
    snprintf(expect, sizeof expect, "(C,) = (%lld,)", (long long)C);
    npy_intp want_c[1] = {C};
    mean = as_f32(omean, fn, "mean", 1, "(C,)");
    if (!mean || require_shape(mean, 1, want_c, fn, "mean", expect)) goto done;
    std = as_f32(ostd, fn, "std", 1, "(C,)");
    if (!std || require_shape(std, 1, want_c, fn, "std", expect)) goto done;
    npy_intp dims[4] = {B, C, H, W};
    if (layout == SAL_CNHW) { dims[0] = C; dims[1] = B; }
    if (oout == Py_None) {
        out = new_empty(4, dims, NPY_FLOAT32);
        if (!out) goto done;
    } else {
        if (!PyArray_Check(oout) || PyArray_TYPE((PyArrayObject *)oout) != NPY_FLOAT32 ||
            !PyArray_ISCARRAY((PyArrayObject *)oout) ||
            PyArray_ISBYTESWAPPED((PyArrayObject *)oout)) {
            PyErr_Format(PyExc_TypeError, "%s: out must be a float32, C-contiguous, aligned, "
                         "writeable ndarray in native byte order", fn);
            goto done;
        }
        out = (PyArrayObject *)oout;
        Py_INCREF(out);
        snprintf(expect, sizeof expect, "(%lld, %lld, %lld, %lld) for layout %s",
                 (long long)dims[0], (long long)dims[1], (long long)dims[2], (long long)dims[3],
                 layout_s);
        if (require_shape(out, 4, dims, fn, "out", expect)) goto done;
    }
    sal_batch_desc d = {C, H, W, PyArray_DATA(mean), PyArray_DATA(std), pad, flip, seed, epoch,
                        layout};
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_make_batch(PyArray_DATA(out), PyArray_DATA(img), N, PyArray_DATA(idx), B, &d);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(img);
    Py_XDECREF(idx);
    Py_XDECREF(mean);
    Py_XDECREF(std);
    Py_XDECREF(out);
    return ret;
}

/* ---- layers: batch norm, ReLU, add, pooling, Linear, cross-entropy, SGD ------------ */

/* New reference to obj when the kernel may write it in place: an ndarray of typenum,
 * C-contiguous, aligned, native byte order and writeable, with ndim dimensions (-1: any).
 * Never converted: an update written into a silent copy would be lost. */
static PyArrayObject *as_inplace(PyObject *obj, int typenum, const char *fn, const char *arg,
                                 int ndim, const char *dims_doc) {
    const char *tname = typenum == NPY_FLOAT64 ? "float64" : "float32";
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a writeable %s array (updated in place), "
                     "got None", fn, arg, tname);
        return NULL;
    }
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a numpy.ndarray (updated in place), got %.100s",
                     fn, arg, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have dtype %s in native byte order (it is "
                     "updated in place, never copied), got dtype %S", fn, arg, tname,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be C-contiguous and aligned (it is updated in "
                     "place, never copied)", fn, arg);
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be writeable (it is updated in place)", fn, arg);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be a %d-D array %s, got %d-D", fn, arg, ndim,
                     dims_doc, PyArray_NDIM(a));
        return NULL;
    }
    Py_INCREF(a);
    return a;
}

/* (C,) vector for channel parameters; None allowed when may_be_none (result NULL, no error) */
static int channel_vec(PyArrayObject **out, PyObject *obj, int typenum, int may_be_none,
                       npy_intp C, const char *fn, const char *arg) {
    *out = NULL;
    if (may_be_none && obj == Py_None) return 0;
    *out = as_real(obj, typenum, fn, arg, 1, "(C,)");
    if (!*out) return -1;
    char expect[48];
    snprintf(expect, sizeof expect, "(C,) = (%lld,)", (long long)C);
    return require_shape(*out, 1, &C, fn, arg, expect);
}

static void *data_or_null(PyArrayObject *a) { return a ? PyArray_DATA(a) : NULL; }

static sal_act act_nchw(PyArrayObject *x) {
    return (sal_act){PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2), PyArray_DIM(x, 3),
                     SAL_NCHW};
}

/* an elementwise op's geometry: the array seen as (1, numel, 1, 1) */
static sal_act act_flat(PyArrayObject *x) { return (sal_act){1, PyArray_SIZE(x), 1, 1, SAL_NCHW}; }

/* batch_norm / batch_norm_relu (relu = 1) / ref_batch_norm_f64 (typenum NPY_FLOAT64) */
static PyObject *bn_forward_py(PyObject *m, PyObject *args, PyObject *kw, int typenum, int relu,
                               const char *fn) {
    static char *kwlist_bn[] = {"x", "gamma", "beta", "running_mean", "running_var", "training",
                                "momentum", "eps", NULL};
    static char *kwlist_relu[] = {"x", "gamma", "beta", "running_mean", "running_var", "residual",
                                  "training", "momentum", "eps", NULL};
    PyObject *ox, *og, *ob, *orm = Py_None, *orv = Py_None, *ores = Py_None;
    PyObject *omomentum = NULL, *oeps = NULL;
    int training = 1;
    double momentum = 0.1, eps = 1e-5;
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
    sal_bn_desc d = {act_nchw(x), training, momentum, eps};
    if (sal_bn_check(&d) != SAL_OK) {
        PyErr_Format(PyExc_ValueError, "%s: %s", fn, sal_last_error());
        goto done;
    }
    char expect[48];
    snprintf(expect, sizeof expect, "(C,) = (%lld,)", (long long)C);
    if (training) {  /* updated in place when given: both or neither */
        if ((orm == Py_None) != (orv == Py_None)) {
            PyErr_Format(PyExc_ValueError, "%s: running_mean and running_var: give both or "
                         "neither (got %s and %s)", fn, orm == Py_None ? "None" : "an array",
                         orv == Py_None ? "None" : "an array");
            goto done;
        }
        if (orm != Py_None) {
            rm = as_inplace(orm, typenum, fn, "running_mean", 1, "(C,)");
            if (!rm || require_shape(rm, 1, &C, fn, "running_mean", expect)) goto done;
            rv = as_inplace(orv, typenum, fn, "running_var", 1, "(C,)");
            if (!rv || require_shape(rv, 1, &C, fn, "running_var", expect)) goto done;
        }
    } else {  /* read only */
        if (orm == Py_None || orv == Py_None) {
            PyErr_Format(PyExc_TypeError, "%s: %s must be an array in eval mode (training=False), "
                         "got None", fn, orm == Py_None ? "running_mean" : "running_var");
            goto done;
        }
        if (channel_vec(&rm, orm, typenum, 0, C, fn, "running_mean") ||
            channel_vec(&rv, orv, typenum, 0, C, fn, "running_var"))
            goto done;
    }
    if (ores != Py_None) {
        res = as_real(ores, typenum, fn, "residual", 4, "(N, C, H, W)");
        if (!res) goto done;
        char ex4[96];
        snprintf(ex4, sizeof ex4, "(N, C, H, W) = (%lld, %lld, %lld, %lld)", (long long)d.x.n,
                 (long long)d.x.c, (long long)d.x.h, (long long)d.x.w);
        if (require_shape(res, 4, PyArray_DIMS(x), fn, "residual", ex4)) goto done;
    }
    y = new_empty(4, PyArray_DIMS(x), typenum);
    sm = new_empty(1, &C, typenum);
    si = new_empty(1, &C, typenum);
    if (!y || !sm || !si) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_FLOAT64)
        s = sal_ref_bn_fwd_f64(PyArray_DATA(y), PyArray_DATA(sm), PyArray_DATA(si),
                               data_or_null(rm), data_or_null(rv), PyArray_DATA(x),
                               data_or_null(g), data_or_null(b), &d);
    else if (relu)
        s = sal_bn_relu_fwd(PyArray_DATA(y), PyArray_DATA(sm), PyArray_DATA(si), data_or_null(rm),
                            data_or_null(rv), PyArray_DATA(x), data_or_null(g), data_or_null(b),
                            data_or_null(res), &d);
    else
        s = sal_bn_fwd(PyArray_DATA(y), PyArray_DATA(sm), PyArray_DATA(si), data_or_null(rm),
                       data_or_null(rv), PyArray_DATA(x), data_or_null(g), data_or_null(b), &d);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = Py_BuildValue("(NNN)", y, sm, si);
    y = sm = si = NULL;
done:
    Py_XDECREF(x); Py_XDECREF(g); Py_XDECREF(b); Py_XDECREF(rm); Py_XDECREF(rv);
    Py_XDECREF(res); Py_XDECREF(y); Py_XDECREF(sm); Py_XDECREF(si);
    return ret;
}

/* batch_norm_backward / batch_norm_relu_backward (relu = 1: takes y, returns grad_residual)
 * / ref_batch_norm_backward_f64 */
static PyObject *bn_backward_py(PyObject *m, PyObject *args, PyObject *kw, int typenum, int relu,
                                const char *fn) {
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
    sal_bn_desc d = {act_nchw(x), training, 0.1, 1e-5};
    if (sal_bn_check(&d) != SAL_OK) {
        PyErr_Format(PyExc_ValueError, "%s: %s", fn, sal_last_error());
        goto done;
    }
    char ex4[96];
    snprintf(ex4, sizeof ex4, "(N, C, H, W) = (%lld, %lld, %lld, %lld)", (long long)d.x.n,
             (long long)d.x.c, (long long)d.x.h, (long long)d.x.w);
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
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_FLOAT64)
        s = sal_ref_bn_bwd_f64(PyArray_DATA(gx), PyArray_DATA(gg), PyArray_DATA(gb),
                               PyArray_DATA(gy), PyArray_DATA(x), data_or_null(g),
                               PyArray_DATA(sm), PyArray_DATA(si), &d);
    else if (relu)
        s = sal_bn_relu_bwd(PyArray_DATA(gx), PyArray_DATA(gg), PyArray_DATA(gb), PyArray_DATA(gr),
                            PyArray_DATA(gy), PyArray_DATA(y), PyArray_DATA(x), data_or_null(g),
                            PyArray_DATA(sm), PyArray_DATA(si), &d);
    else
        s = sal_bn_bwd(PyArray_DATA(gx), PyArray_DATA(gg), PyArray_DATA(gb), PyArray_DATA(gy),
                       PyArray_DATA(x), data_or_null(g), PyArray_DATA(sm), PyArray_DATA(si), &d);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = relu ? Py_BuildValue("(NNNN)", gx, gg, gb, gr) : Py_BuildValue("(NNN)", gx, gg, gb);
    gx = gg = gb = gr = NULL;
done:
    Py_XDECREF(x); Py_XDECREF(g); Py_XDECREF(y); Py_XDECREF(gy); Py_XDECREF(sm);
    Py_XDECREF(si); Py_XDECREF(gx); Py_XDECREF(gg); Py_XDECREF(gb); Py_XDECREF(gr);
    return ret;
}

static PyObject *core_batch_norm(PyObject *m, PyObject *args, PyObject *kw) {
    return bn_forward_py(m, args, kw, NPY_FLOAT32, 0, "batch_norm");
}
static PyObject *core_batch_norm_backward(PyObject *m, PyObject *args, PyObject *kw) {
    return bn_backward_py(m, args, kw, NPY_FLOAT32, 0, "batch_norm_backward");
}
static PyObject *core_batch_norm_relu(PyObject *m, PyObject *args, PyObject *kw) {
    return bn_forward_py(m, args, kw, NPY_FLOAT32, 1, "batch_norm_relu");
}
static PyObject *core_batch_norm_relu_backward(PyObject *m, PyObject *args, PyObject *kw) {
    return bn_backward_py(m, args, kw, NPY_FLOAT32, 1, "batch_norm_relu_backward");
}
static PyObject *core_ref_batch_norm_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return bn_forward_py(m, args, kw, NPY_FLOAT64, 0, "ref_batch_norm_f64");
}
static PyObject *core_ref_batch_norm_backward_f64(PyObject *m, PyObject *args, PyObject *kw) {
    return bn_backward_py(m, args, kw, NPY_FLOAT64, 0, "ref_batch_norm_backward_f64");
}

/* relu(x) -> y, any shape */
static PyObject *core_relu(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", NULL};
    const char *fn = "relu";
    PyObject *ox;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &ox)) return NULL;
    PyArrayObject *x = NULL, *y = NULL;
    PyObject *ret = NULL;
    x = as_f32(ox, fn, "x", -1, "of any shape");
    if (!x) goto done;
    y = new_empty(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32);
    if (!y) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_relu_fwd(PyArray_DATA(y), PyArray_DATA(x), act_flat(x));
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(y);
    return ret;
}

/* two arrays of one shape: the second must match the first */
static int same_shape(PyArrayObject *a, PyArrayObject *b, const char *fn, const char *aname,
                      const char *bname) {
    char sh[96], expect[128];
    shape_str(sh, sizeof sh, a);
    snprintf(expect, sizeof expect, "%s (the shape of %s)", sh, aname);
    return require_shape(b, PyArray_NDIM(a), PyArray_DIMS(a), fn, bname, expect);
}

/* relu_backward(y, grad_y) -> grad_x;  add(a, b) -> y */
static PyObject *elementwise2(PyObject *m, PyObject *args, PyObject *kw, int op) {
    static char *kw_relu[] = {"y", "grad_y", NULL};
    static char *kw_add[] = {"a", "b", NULL};
    const char *fn = op ? "add" : "relu_backward";
    const char *an = op ? "a" : "y", *bn = op ? "b" : "grad_y";
    PyObject *oa, *ob;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", op ? kw_add : kw_relu, &oa, &ob))
        return NULL;
    PyArrayObject *a = NULL, *b = NULL, *out = NULL;
    PyObject *ret = NULL;
    a = as_f32(oa, fn, an, -1, "of any shape");
    if (!a) goto done;
    b = as_f32(ob, fn, bn, -1, "of any shape");
    if (!b || same_shape(a, b, fn, an, bn)) goto done;
    out = op ? new_empty(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32)
             : new_array(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32);
    if (!out) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    if (op) s = sal_add_fwd(PyArray_DATA(out), PyArray_DATA(a), PyArray_DATA(b), act_flat(a));
    else s = sal_relu_bwd(PyArray_DATA(out), PyArray_DATA(b), PyArray_DATA(a), act_flat(a));
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(out);
    return ret;
}
static PyObject *core_relu_backward(PyObject *m, PyObject *args, PyObject *kw) {
    return elementwise2(m, args, kw, 0);
}
static PyObject *core_add(PyObject *m, PyObject *args, PyObject *kw) {
    return elementwise2(m, args, kw, 1);
}

/* global_avg_pool(x) -> y (N, C) */
static PyObject *core_global_avg_pool(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", NULL};
    const char *fn = "global_avg_pool";
    PyObject *ox;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &ox)) return NULL;
    PyArrayObject *x = NULL, *y = NULL;
    PyObject *ret = NULL;
    x = as_f32(ox, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    y = new_empty(2, PyArray_DIMS(x), NPY_FLOAT32);
    if (!y) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_gap_fwd(PyArray_DATA(y), PyArray_DATA(x), act_nchw(x));
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(y);
    return ret;
}

static int parse_shape4(PyObject *obj, const char *fn, const char *arg, npy_intp out[4]);

/* global_avg_pool_backward(grad_y, input_shape) -> grad_x (N, C, H, W) */
static PyObject *core_global_avg_pool_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"grad_y", "input_shape", NULL};
    const char *fn = "global_avg_pool_backward";
    PyObject *ogy, *oshape;
    npy_intp shape4[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &ogy, &oshape)) return NULL;
    PyArrayObject *gy = NULL, *gx = NULL;
    PyObject *ret = NULL;
    if (parse_shape4(oshape, fn, "input_shape", shape4)) goto done;
    const long long n = shape4[0], c = shape4[1], h = shape4[2], w = shape4[3];
    const sal_act a = {n, c, h, w, SAL_NCHW};
    gy = as_f32(ogy, fn, "grad_y", 2, "(N, C)");
    if (!gy) goto done;
    npy_intp want[2] = {(npy_intp)n, (npy_intp)c}, dims[4] = {(npy_intp)n, (npy_intp)c,
                                                              (npy_intp)h, (npy_intp)w};
    char expect[64];
    snprintf(expect, sizeof expect, "(N, C) = (%lld, %lld)", n, c);
    if (require_shape(gy, 2, want, fn, "grad_y", expect)) goto done;
    gx = new_array(4, dims, NPY_FLOAT32);
    if (!gx) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_gap_bwd(PyArray_DATA(gx), PyArray_DATA(gy), a);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)gx;
    gx = NULL;
done:
    Py_XDECREF(gy);
    Py_XDECREF(gx);
    return ret;
}

/* linear(x, w, b=None) -> y (N, O) */
static PyObject *core_linear(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "b", NULL};
    const char *fn = "linear";
    PyObject *ox, *ow, *ob = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &ox, &ow, &ob)) return NULL;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *y = NULL;
    PyObject *ret = NULL;
    char expect[64];
    x = as_f32(ox, fn, "x", 2, "(N, I)");
    if (!x) goto done;
    w = as_f32(ow, fn, "w", 2, "(O, I)");
    if (!w) goto done;
    /* NI, NO: I is complex.h's imaginary unit */
    const npy_intp N = PyArray_DIM(x, 0), NI = PyArray_DIM(x, 1), NO = PyArray_DIM(w, 0);
    snprintf(expect, sizeof expect, "(O, I=%lld)", (long long)NI);
    npy_intp want_w[2] = {-1, NI};
    if (require_shape(w, 2, want_w, fn, "w", expect)) goto done;
    if (ob != Py_None) {
        b = as_f32(ob, fn, "b", 1, "(O,)");
        if (!b) goto done;
        snprintf(expect, sizeof expect, "(O,) = (%lld,)", (long long)NO);
        if (require_shape(b, 1, &NO, fn, "b", expect)) goto done;
    }
    npy_intp dims[2] = {N, NO};
    y = new_empty(2, dims, NPY_FLOAT32);
    if (!y) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_linear_fwd(PyArray_DATA(y), PyArray_DATA(x), PyArray_DATA(w), data_or_null(b), N, NI, NO);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(b); Py_XDECREF(y);
    return ret;
}

/* linear_backward(x, w, grad_y) -> (grad_x, grad_w, grad_b) */
static PyObject *core_linear_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "grad_y", NULL};
    const char *fn = "linear_backward";
    PyObject *ox, *ow, *ogy;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &ox, &ow, &ogy)) return NULL;
    PyArrayObject *x = NULL, *w = NULL, *gy = NULL, *gx = NULL, *gw = NULL, *gb = NULL;
    PyObject *ret = NULL;
    char expect[64];
    x = as_f32(ox, fn, "x", 2, "(N, I)");
    if (!x) goto done;
    w = as_f32(ow, fn, "w", 2, "(O, I)");
    if (!w) goto done;
    /* NI, NO: I is complex.h's imaginary unit */
    const npy_intp N = PyArray_DIM(x, 0), NI = PyArray_DIM(x, 1), NO = PyArray_DIM(w, 0);
    snprintf(expect, sizeof expect, "(O, I=%lld)", (long long)NI);
    npy_intp want_w[2] = {-1, NI};
    if (require_shape(w, 2, want_w, fn, "w", expect)) goto done;
    gy = as_f32(ogy, fn, "grad_y", 2, "(N, O)");
    if (!gy) goto done;
    snprintf(expect, sizeof expect, "(N, O) = (%lld, %lld)", (long long)N, (long long)NO);
    npy_intp want_gy[2] = {N, NO};
    if (require_shape(gy, 2, want_gy, fn, "grad_y", expect)) goto done;
    gx = new_array(2, PyArray_DIMS(x), NPY_FLOAT32);
    gw = new_array(2, PyArray_DIMS(w), NPY_FLOAT32);
    gb = new_array(1, &NO, NPY_FLOAT32);
    if (!gx || !gw || !gb) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_linear_bwd(PyArray_DATA(gx), PyArray_DATA(gw), PyArray_DATA(gb), PyArray_DATA(gy),
                       PyArray_DATA(x), PyArray_DATA(w), N, NI, NO);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = Py_BuildValue("(NNN)", gx, gw, gb);
    gx = gw = gb = NULL;
done:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(gy); Py_XDECREF(gx); Py_XDECREF(gw);
    Py_XDECREF(gb);
    return ret;
}

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
static PyObject *xent_py(PyObject *m, PyObject *args, PyObject *kw, int backward) {
    static char *kw_fwd[] = {"logits", "labels", NULL};
    static char *kw_bwd[] = {"logits", "labels", "grad", NULL};
    const char *fn = backward ? "cross_entropy_backward" : "cross_entropy";
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
        Py_BEGIN_ALLOW_THREADS
        s = sal_xent_bwd(PyArray_DATA(gz), PyArray_DATA(z), PyArray_DATA(lab), N, K, (float)grad);
        Py_END_ALLOW_THREADS
        if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
        ret = (PyObject *)gz;
        gz = NULL;
    } else {
        float loss = 0.0f;
        Py_BEGIN_ALLOW_THREADS
        s = sal_xent_fwd(&loss, NULL, PyArray_DATA(z), PyArray_DATA(lab), N, K);
        Py_END_ALLOW_THREADS
        if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
        ret = PyFloat_FromDouble(loss);
    }
done:
    Py_XDECREF(z); Py_XDECREF(lab); Py_XDECREF(gz);
    return ret;
}
static PyObject *core_cross_entropy(PyObject *m, PyObject *args, PyObject *kw) {
    return xent_py(m, args, kw, 0);
}
static PyObject *core_cross_entropy_backward(PyObject *m, PyObject *args, PyObject *kw) {
    return xent_py(m, args, kw, 1);
}

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

/* sgd_step(params, grads, momentum_buffer, lr, momentum=0.9, weight_decay=0.0,
 *          nesterov=False, dampening=0.0, first_step=False, segments=None) -> None */
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
    Py_BEGIN_ALLOW_THREADS
    s = sal_sgd_step(PyArray_DATA(p), data_or_null(buf), PyArray_DATA(g), PyArray_SIZE(p), &d,
                     segs, nseg, first);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = Py_NewRef(Py_None);
done:
    PyMem_RawFree(segs);
    Py_XDECREF(p); Py_XDECREF(g); Py_XDECREF(buf);
    return ret;
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
        long long v = 0;
        char name[64];
        snprintf(name, sizeof name, "%s[%d]", arg, i);
        if (i64_arg(item, fn, name, &v)) {
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
    /* the float32 array of that shape must be addressable: N*C*H*W*4 < 2**63 */
    long long total = 1;
    for (int i = 0; i < 4; i++)
        if (__builtin_mul_overflow(total, (long long)out[i], &total) ||
            total > (long long)(NPY_MAX_INTP / (npy_intp)sizeof(double))) {
            PyErr_Format(PyExc_ValueError, "%s: %s=(%lld, %lld, %lld, %lld): N*C*H*W overflows "
                         "(sizes too large)", fn, arg, (long long)out[0], (long long)out[1],
                         (long long)out[2], (long long)out[3]);
            return -1;
        }
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
    PyObject *ox, *ooff, *ostride = NULL;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &ox, &ooff, &ostride) ||
        i64_arg(ostride, fn, "stride", &stride))
        return NULL;
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
    PyObject *ogy, *ooff, *oshape, *ostride = NULL;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwlist, &ogy, &ooff, &oshape, &ostride) ||
        i64_arg(ostride, fn, "stride", &stride))
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
    long long c = 0;
    if (i64_arg(arg, "default_shift_offsets", "C", &c)) return NULL;
    if (check_int_arg(c, 1, "default_shift_offsets", "C")) return NULL;
    if (c > (long long)(NPY_MAX_INTP / 8)) {
        PyErr_Format(PyExc_ValueError, "default_shift_offsets: C=%lld: too large (C*2 int32 "
                     "values overflow the address space)", c);
        return NULL;
    }
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
    PyObject *ox, *ooff, *ostride = NULL;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &ox, &ooff, &ostride) ||
        i64_arg(ostride, fn, "stride", &stride))
        return NULL;
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
    PyObject *ox, *ooff, *ogy, *ostride = NULL;
    long long stride = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwlist, &ox, &ooff, &ogy, &ostride) ||
        i64_arg(ostride, fn, "stride", &stride))
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
    PyArrayObject *x, *w, *a, *gy, *mask;
    sal_sal_desc d;
    sal_act y;
} sal_args;

static void sal_args_free(sal_args *a) {
    Py_XDECREF(a->x);
    Py_XDECREF(a->w);
    Py_XDECREF(a->a);
    Py_XDECREF(a->gy);
    Py_XDECREF(a->mask);
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

static int sal_args_parse(PyObject *m, sal_args *a, const char *fn, int typenum, PyObject *ox,
                          PyObject *ow, PyObject *oa, double beta, PyObject *ogy, long long stride,
                          long long padding, int hard, PyObject *omask) {
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
                          O, stride, padding, A0 == 1 && O > 1, hard != 0, beta, NULL,
                          sal_get_num_threads()};  /* scratch is sized for these threads */
    if (mask_arg(omask, a->a, fn, &a->mask)) return -1;
    if (a->mask) a->d.mask = PyArray_DATA(a->mask);
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
    static char *kwlist[] = {"x", "w", "logits", "beta", "stride", "padding", "hard", "mask", NULL};
    PyObject *ox, *ow, *oa, *obeta, *ostride = NULL, *opadding = NULL, *omask = Py_None;
    double beta = 0.0;
    long long stride = 1, padding = 1;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|OOpO", kwlist, &ox, &ow, &oa, &obeta, &ostride,
                                     &opadding, &hard, &omask) ||
        f64_arg(obeta, fn, "beta", &beta) || i64_arg(ostride, fn, "stride", &stride) ||
        i64_arg(opadding, fn, "padding", &padding))
        return NULL;
    sal_args a;
    PyArrayObject *y = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sal_args_parse(m, &a, fn, typenum, ox, ow, oa, beta, NULL, stride, padding, hard, omask))
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
                             "stride", "padding", "hard",   "mask", NULL};
    PyObject *ox, *ow, *oa, *obeta, *ogy, *ostride = NULL, *opadding = NULL, *omask = Py_None;
    double beta = 0.0;
    long long stride = 1, padding = 1;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|OOpO", kwlist, &ox, &ow, &oa, &obeta, &ogy,
                                     &ostride, &opadding, &hard, &omask) ||
        f64_arg(obeta, fn, "beta", &beta) || i64_arg(ostride, fn, "stride", &stride) ||
        i64_arg(opadding, fn, "padding", &padding))
        return NULL;
    sal_args a;
    PyArrayObject *gx = NULL, *gw = NULL, *ga = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sal_args_parse(m, &a, fn, typenum, ox, ow, oa, beta, ogy, stride, padding, hard, omask))
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
    static char *kwlist[] = {"logits", "beta", "hard", "mask", NULL};
    PyObject *oa, *obeta, *omask = Py_None;
    double beta = 0.0;
    int hard = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pO", kwlist, &oa, &obeta, &hard, &omask) ||
        f64_arg(obeta, fn, "beta", &beta))
        return NULL;
    if (check_beta(beta, fn)) return NULL;
    PyArrayObject *a = as_real(oa, typenum, fn, "logits", -1, "(..., 9)"), *p = NULL, *mk = NULL;
    if (!a) return NULL;
    if (mask_arg(omask, a, fn, &mk)) {
        Py_DECREF(a);
        return NULL;
    }
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
    const float *md = mk ? PyArray_DATA(mk) : NULL;
    if (typenum == NPY_FLOAT32)
        s = sal_attn_probs_masked(PyArray_DATA(p), PyArray_DATA(a), md, l, beta, hard);
    else
        s = sal_ref_attn_probs_masked_f64(PyArray_DATA(p), PyArray_DATA(a), md, l, beta, hard);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)p;
    p = NULL;
done:
    Py_XDECREF(mk);
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

/* ---- networks (a program of ops over channel-major buffers; see sal/net.h) ---------- */

#define NET_CAPSULE "salnp._core.net"

static void net_capsule_free(PyObject *cap) {
    sal_net_free((sal_net *)PyCapsule_GetPointer(cap, NET_CAPSULE));
}

static sal_net *net_from_capsule(PyObject *cap, const char *fn) {
    if (!PyCapsule_IsValid(cap, NET_CAPSULE)) {
        PyErr_Format(PyExc_TypeError, "%s: net must be an engine made by net_create", fn);
        return NULL;
    }
    return (sal_net *)PyCapsule_GetPointer(cap, NET_CAPSULE);
}

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

/* A float32 C-contiguous writeable array used in place (an arena): never a silent copy. */
static int arena_arg(PyObject *obj, const char *fn, const char *arg, PyArrayObject **out) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32 ||
        !PyArray_ISCARRAY((PyArrayObject *)obj) || PyArray_ISBYTESWAPPED((PyArrayObject *)obj)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: %s must be a float32, C-contiguous, aligned, writeable array "
                     "(it is updated in place)", fn, arg);
        return -1;
    }
    *out = (PyArrayObject *)obj;
    return 0;
}

static PyObject *core_net_create(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"shapes", "ops", "offsets", "nparams", "nbuffers", NULL};
    const char *fn = "net_create";
    PyObject *oshapes, *oops, *ooff;
    long long nparams, nbuffers;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLL", kwlist, &oshapes, &oops, &ooff, &nparams,
                                     &nbuffers))
        return NULL;
    PyObject *ret = NULL;
    PyArrayObject *shapes = (PyArrayObject *)PyArray_FROMANY(oshapes, NPY_INT64, 2, 2, NPY_ARRAY_IN_ARRAY);
    PyArrayObject *ops = (PyArrayObject *)PyArray_FROMANY(oops, NPY_INT64, 2, 2, NPY_ARRAY_IN_ARRAY);
    PyArrayObject *off = (PyArrayObject *)PyArray_FROMANY(ooff, NPY_INT32, 2, 2, NPY_ARRAY_IN_ARRAY);
    if (!shapes || !ops || !off) goto done;
    if (PyArray_DIM(shapes, 1) != 3 || PyArray_DIM(ops, 1) != (npy_intp)(sizeof(sal_op) / sizeof(int64_t)) ||
        PyArray_DIM(off, 1) != 2) {
        PyErr_Format(PyExc_ValueError, "%s: shapes (B, 3), ops (n, %d) and offsets (M, 2) expected",
                     fn, (int)(sizeof(sal_op) / sizeof(int64_t)));
        goto done;
    }
    sal_net *net = NULL;
    sal_status s = sal_net_create(&net, PyArray_DATA(shapes), PyArray_DIM(shapes, 0),
                                  PyArray_DATA(ops), PyArray_DIM(ops, 0), PyArray_DATA(off),
                                  PyArray_DIM(off, 0), nparams, nbuffers);
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = PyCapsule_New(net, NET_CAPSULE, net_capsule_free);
    if (!ret) sal_net_free(net);
done:
    Py_XDECREF(shapes);
    Py_XDECREF(ops);
    Py_XDECREF(off);
    return ret;
}

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
    sal_net *net = net_from_capsule(cap, fn);
    PyArrayObject *params, *bufs, *x = NULL, *y = NULL;
    PyObject *ret = NULL;
    if (!net || arena_arg(oparams, fn, "params", &params) || arena_arg(obufs, fn, "buffers", &bufs))
        return NULL;
    x = as_f32(ox, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    npy_intp n = PyArray_DIM(x, 0);
    if (check_arena_sizes(net, params, bufs, fn)) goto done;
    npy_intp dims[2] = {n, (npy_intp)sal_net_output_width(net)};
    y = new_empty(2, dims, NPY_FLOAT32);
    if (!y) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    sal_act xg = {n, PyArray_DIM(x, 1), PyArray_DIM(x, 2), PyArray_DIM(x, 3), SAL_NCHW};
    s = sal_net_forward(net, PyArray_DATA(y), PyArray_DATA(x), xg, PyArray_DATA(params),
                        PyArray_DATA(bufs), train, hard, beta);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(y);
    return ret;
}

static PyObject *core_net_backward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "params", "grads", "grad_logits", NULL};
    const char *fn = "backward";
    PyObject *cap, *oparams, *ograds, *ogy;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO", kwlist, &cap, &oparams, &ograds, &ogy))
        return NULL;
    sal_net *net = net_from_capsule(cap, fn);
    PyArrayObject *params, *grads, *gy = NULL;
    PyObject *ret = NULL;
    if (!net || arena_arg(oparams, fn, "params", &params) || arena_arg(ograds, fn, "grads", &grads))
        return NULL;
    gy = as_f32(ogy, fn, "grad_logits", 2, "(N, K)");
    if (!gy) goto done;
    npy_intp want[2] = {sal_net_last_batch(net), sal_net_output_width(net)};
    char expect[64];
    snprintf(expect, sizeof expect, "(N, K) = (%lld, %lld) of the last forward", (long long)want[0],
             (long long)want[1]);
    if (require_shape(gy, 2, want, fn, "grad_logits", expect)) goto done;
    if (check_arena_sizes(net, params, NULL, fn) || check_arena_sizes(net, grads, NULL, fn))
        goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_net_backward(net, PyArray_DATA(grads), PyArray_DATA(gy), PyArray_DATA(params));
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = Py_NewRef(Py_None);
done:
    Py_XDECREF(gy);
    return ret;
}

/* ---- accounting and the inference network (see sal/count.h, sal/infer.h) ---------- */

/* Columns of the int64 part of a count: op, kind, in (C, H, W), out (C, H, W), train_only,
 * kept, macs, bwd_macs, shift_moves; params come as a separate float64 vector. */
#define COUNT_NCOL 13

/* (ints (nops, 13) int64, params (nops,) float64) from rows, or NULL with an error set */
static PyObject *count_result(const sal_count_row *rows, int64_t nops) {
    npy_intp di[2] = {(npy_intp)nops, COUNT_NCOL}, dp[1] = {(npy_intp)nops};
    PyArrayObject *ints = new_empty(2, di, NPY_INT64), *par = new_empty(1, dp, NPY_FLOAT64);
    PyObject *ret = NULL;
    if (!ints || !par) goto done;
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
done:
    Py_XDECREF(ints);
    Py_XDECREF(par);
    return ret;
}

static PyObject *core_net_count(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "params", "beta", "inference", "buffers", NULL};
    const char *fn = "count";
    PyObject *cap, *oparams, *obeta = NULL, *obufs = Py_None;
    double beta = 1.0;
    int inference = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OpO", kwlist, &cap, &oparams, &obeta, &inference,
                                     &obufs) ||
        f64_arg(obeta, fn, "beta", &beta))
        return NULL;
    sal_net *net = net_from_capsule(cap, fn);
    PyArrayObject *params, *bufs = NULL;
    if (!net || arena_arg(oparams, fn, "params", &params) ||
        (obufs != Py_None && arena_arg(obufs, fn, "buffers", &bufs)) ||
        check_arena_sizes(net, params, bufs, fn))
        return NULL;
    int64_t nops;
    sal_net_program(net, NULL, NULL, NULL, &nops, NULL, NULL);
    sal_count_row *rows = PyMem_RawMalloc((size_t)nops * sizeof *rows);
    if (!rows) return PyErr_NoMemory();
    PyObject *ret = NULL;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    s = sal_net_count(net, PyArray_DATA(params), bufs ? PyArray_DATA(bufs) : NULL, beta,
                      inference ? SAL_COUNT_INFER : SAL_COUNT_TRAIN, rows);
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) raise_status(m, s, fn);
    else ret = count_result(rows, nops);
    PyMem_RawFree(rows);
    return ret;
}

#define INFER_CAPSULE "salnp._core.infer"

static void infer_capsule_free(PyObject *cap) {
    sal_infer_free((sal_infer *)PyCapsule_GetPointer(cap, INFER_CAPSULE));
}

static sal_infer *infer_from_capsule(PyObject *cap, const char *fn) {
    if (!PyCapsule_IsValid(cap, INFER_CAPSULE)) {
        PyErr_Format(PyExc_TypeError, "%s: net must be an engine made by infer_create", fn);
        return NULL;
    }
    return (sal_infer *)PyCapsule_GetPointer(cap, INFER_CAPSULE);
}

static PyObject *core_infer_create(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"shapes", "ops", "shifts", "pairs", "nweights", NULL};
    const char *fn = "infer_create";
    PyObject *oshapes, *oops, *oshifts, *opairs;
    long long nweights;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOL", kwlist, &oshapes, &oops, &oshifts, &opairs,
                                     &nweights))
        return NULL;
    PyObject *ret = NULL;
    PyArrayObject *shapes = (PyArrayObject *)PyArray_FROMANY(oshapes, NPY_INT64, 2, 2, NPY_ARRAY_IN_ARRAY);
    PyArrayObject *ops = (PyArrayObject *)PyArray_FROMANY(oops, NPY_INT64, 2, 2, NPY_ARRAY_IN_ARRAY);
    PyArrayObject *sh = (PyArrayObject *)PyArray_FROMANY(oshifts, NPY_INT32, 2, 2, NPY_ARRAY_IN_ARRAY);
    PyArrayObject *pr = (PyArrayObject *)PyArray_FROMANY(opairs, NPY_INT32, 2, 2, NPY_ARRAY_IN_ARRAY);
    if (!shapes || !ops || !sh || !pr) goto done;
    const npy_intp nf = (npy_intp)(sizeof(sal_iop) / sizeof(int64_t));
    if (PyArray_DIM(shapes, 1) != 3 || PyArray_DIM(ops, 1) != nf || PyArray_DIM(sh, 1) != 3 ||
        PyArray_DIM(pr, 1) != 4) {
        PyErr_Format(PyExc_ValueError,
                     "%s: shapes (B, 3), ops (n, %d), shifts (M, 3) and pairs (P, 4) expected", fn,
                     (int)nf);
        goto done;
    }
    sal_infer *net = NULL;
    sal_status s = sal_infer_create(&net, PyArray_DATA(shapes), PyArray_DIM(shapes, 0),
                                    PyArray_DATA(ops), PyArray_DIM(ops, 0), PyArray_DATA(sh),
                                    PyArray_DIM(sh, 0), PyArray_DATA(pr), PyArray_DIM(pr, 0),
                                    nweights);
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = PyCapsule_New(net, INFER_CAPSULE, infer_capsule_free);
    if (!ret) sal_infer_free(net);
done:
    Py_XDECREF(shapes);
    Py_XDECREF(ops);
    Py_XDECREF(sh);
    Py_XDECREF(pr);
    return ret;
}

static PyObject *core_infer_forward(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"net", "weights", "x", NULL};
    const char *fn = "forward";
    PyObject *cap, *ow, *ox;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &cap, &ow, &ox)) return NULL;
    sal_infer *net = infer_from_capsule(cap, fn);
    PyArrayObject *w = NULL, *x = NULL, *y = NULL;
    PyObject *ret = NULL;
    if (!net) return NULL;
    w = as_f32(ow, fn, "weights", 1, "(nweights,)");
    if (!w) goto done;
    if (PyArray_SIZE(w) != sal_infer_num_weights(net)) {
        PyErr_Format(PyExc_ValueError, "%s: weights has %lld values, the engine was built for %lld",
                     fn, (long long)PyArray_SIZE(w), (long long)sal_infer_num_weights(net));
        goto done;
    }
    x = as_f32(ox, fn, "x", 4, "(N, C, H, W)");
    if (!x) goto done;
    npy_intp n = PyArray_DIM(x, 0);
    npy_intp dims[2] = {n, (npy_intp)sal_infer_output_width(net)};
    y = new_empty(2, dims, NPY_FLOAT32);
    if (!y) goto done;
    sal_status s;
    Py_BEGIN_ALLOW_THREADS
    sal_act xg = {n, PyArray_DIM(x, 1), PyArray_DIM(x, 2), PyArray_DIM(x, 3), SAL_NCHW};
    s = sal_infer_forward(net, PyArray_DATA(y), PyArray_DATA(x), xg, PyArray_DATA(w));
    Py_END_ALLOW_THREADS
    if (s != SAL_OK) { raise_status(m, s, fn); goto done; }
    ret = (PyObject *)y;
    y = NULL;
done:
    Py_XDECREF(w);
    Py_XDECREF(x);
    Py_XDECREF(y);
    return ret;
}

static PyObject *core_infer_count(PyObject *m, PyObject *cap) {
    const char *fn = "count";
    sal_infer *net = infer_from_capsule(cap, fn);
    if (!net) return NULL;
    const int64_t nops = sal_infer_num_ops(net);
    sal_count_row *rows = PyMem_RawMalloc((size_t)nops * sizeof *rows);
    if (!rows) return PyErr_NoMemory();
    PyObject *ret = NULL;
    sal_status s = sal_infer_count(net, rows);
    if (s != SAL_OK) raise_status(m, s, fn);
    else ret = count_result(rows, nops);
    PyMem_RawFree(rows);
    return ret;
}

/* ---- module ------------------------------------------------------------------- */

#define KW (PyCFunction)(void (*)(void))
static PyMethodDef core_methods[] = {
    {"blas_info", core_blas_info, METH_NOARGS,
     "blas_info()\n"
     "--\n"
     "\n"
     "blas_info() -> dict\n"
     "\n"
     "BLIS version, flavour, sub-configuration and how it was chosen."},
    {"set_num_threads", core_set_num_threads, METH_O,
     "set_num_threads(n)\n"
     "--\n"
     "\n"
     "set_num_threads(n)\n"
     "\n"
     "Threads used by libsal's loops and by BLIS (n >= 1)."},
    {"get_num_threads", core_get_num_threads, METH_NOARGS,
     "get_num_threads()\n"
     "--\n"
     "\n"
     "get_num_threads() -> int\n"
     "\n"
     "Threads used by libsal."},
    {"conv2d", KW core_conv2d, METH_VARARGS | METH_KEYWORDS,
     "conv2d(x, w, stride=1, padding=0, *, layout='NCHW')\n"
     "--\n"
     "\n"
     "conv2d(x, w, stride=1, padding=0, *, layout='NCHW') -> y\n"
     "\n"
     "Cross-correlation as torch.nn.functional.conv2d, no bias.\n"
     "x (N, C, H, W), w (O, C, K, K) -> y (N, O, Ho, Wo), float32.\n"
     "layout='CNHW': x is channel-major (C, N, H, W) and so is y (O, N, Ho, Wo);\n"
     "a 1x1 convolution is then one GEMM over the whole batch."},
    {"conv2d_backward", KW core_conv2d_backward, METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward(x, w, grad_y, stride=1, padding=0, *, layout='NCHW')\n"
     "--\n"
     "\n"
     "conv2d_backward(x, w, grad_y, stride=1, padding=0, *, layout='NCHW') -> (grad_x, grad_w)\n"
     "\n"
     "Gradients of conv2d with respect to x and w, given grad_y = dL/dy."},
    {"ref_conv2d_f64", KW core_ref_conv2d_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_conv2d_f64(x, w, stride=1, padding=0)\n"
     "--\n"
     "\n"
     "ref_conv2d_f64(x, w, stride=1, padding=0) -> y\n"
     "\n"
     "Naive float64 reference (tests)."},
    {"ref_conv2d_backward_f64", KW core_ref_conv2d_backward_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_conv2d_backward_f64(x, w, grad_y, stride=1, padding=0)\n"
     "--\n"
     "\n"
     "ref_conv2d_backward_f64(x, w, grad_y, stride=1, padding=0) -> (grad_x, grad_w)\n"
     "\n"
     "Naive float64 reference (tests)."},
    {"_parse_cifar", KW core_parse_cifar, METH_VARARGS | METH_KEYWORDS,
     "_parse_cifar(data, num_classes)\n"
     "--\n"
     "\n"
     "_parse_cifar(data, num_classes) -> (images, labels)\n"
     "\n"
     "CIFAR binary records (len(num_classes) label bytes + 3072 pixels) from a bytes-like\n"
     "object: images uint8 (N, 3, 32, 32), labels int32 (N, len(num_classes)).\n"
     "Raises SalError on a malformed buffer (salnp.data adds the file name)."},
    {"_parse_idx", core_parse_idx, METH_O,
     "_parse_idx(data)\n"
     "--\n"
     "\n"
     "_parse_idx(data) -> array\n"
     "\n"
     "IDX unsigned-byte data from a bytes-like object, shaped by its header (uint8)."},
    {"_permutation", KW core_permutation, METH_VARARGS | METH_KEYWORDS,
     "_permutation(n, seed, epoch)\n"
     "--\n"
     "\n"
     "_permutation(n, seed, epoch) -> int64 (n,)\n"
     "\n"
     "A permutation of range(n), a pure function of (n, seed, epoch)."},
    {"_batch_augment", KW core_batch_augment, METH_VARARGS | METH_KEYWORDS,
     "_batch_augment(index, pad, flip, seed, epoch)\n"
     "--\n"
     "\n"
     "_batch_augment(index, pad, flip, seed, epoch) -> int32 (B, 3)\n"
     "\n"
     "The (dy, dx, flip) that _make_batch draws for each sample: crop offsets in the\n"
     "zero-padded image, in [0, 2*pad], and the flip bit."},
    {"_make_batch", KW core_make_batch, METH_VARARGS | METH_KEYWORDS,
     "_make_batch(images, index, mean, std, pad=0, flip=False, seed=0, epoch=0, layout='NCHW', out=None)\n"
     "--\n"
     "\n"
     "_make_batch(images, index, mean, std, pad=0, flip=False, seed=0, epoch=0, layout='NCHW', out=None) -> out\n"
     "\n"
     "float32 batch (B, C, H, W) (or (C, B, H, W) for layout='CNHW') from uint8 images\n"
     "(N, C, H, W) at index: zero-pad by pad, random crop back to H x W, horizontal flip\n"
     "with p = 0.5 when flip, then (v/255 - mean) / std.  Written into out when given."},
    {"batch_norm", KW core_batch_norm, METH_VARARGS | METH_KEYWORDS,
     "batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5)\n"
     "--\n"
     "\n"
     "batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5) -> (y, save_mean, save_invstd)\n"
     "\n"
     "Batch normalisation over N, H, W per channel, as torch.nn.functional.batch_norm.\n"
     "x (N, C, H, W); gamma, beta (C,) or None (1 and 0); returns y (N, C, H, W) and the\n"
     "(C,) mean and 1/sqrt(var + eps) that normalised x, for batch_norm_backward.\n"
     "training=True: batch statistics (biased variance; needs N*H*W >= 2); running_mean and\n"
     "running_var, when given (both or neither), are UPDATED IN PLACE with momentum, the\n"
     "variance unbiased, so they must be float32, C-contiguous, writeable arrays (no copy).\n"
     "training=False: normalises with running_mean, running_var (required, read only)."},
    {"batch_norm_backward", KW core_batch_norm_backward, METH_VARARGS | METH_KEYWORDS,
     "batch_norm_backward(x, gamma, grad_y, save_mean, save_invstd, training=True)\n"
     "--\n"
     "\n"
     "batch_norm_backward(x, gamma, grad_y, save_mean, save_invstd, training=True) -> (grad_x, grad_gamma, grad_beta)\n"
     "\n"
     "Gradients of batch_norm given grad_y = dL/dy and the save_mean, save_invstd it returned.\n"
     "training selects the batch-statistics formula (True) or the eval one (False) and must\n"
     "match the forward call. gamma None means 1."},
    {"batch_norm_relu", KW core_batch_norm_relu, METH_VARARGS | METH_KEYWORDS,
     "batch_norm_relu(x, gamma, beta, running_mean=None, running_var=None, residual=None, training=True, momentum=0.1, eps=1e-5)\n"
     "--\n"
     "\n"
     "batch_norm_relu(x, gamma, beta, running_mean=None, running_var=None, residual=None, training=True, momentum=0.1, eps=1e-5) -> (y, save_mean, save_invstd)\n"
     "\n"
     "Fused relu(batch_norm(x) + residual) in one pass (residual None: relu(batch_norm(x))).\n"
     "Statistics and running-stat update exactly as batch_norm."},
    {"batch_norm_relu_backward", KW core_batch_norm_relu_backward, METH_VARARGS | METH_KEYWORDS,
     "batch_norm_relu_backward(x, gamma, y, grad_y, save_mean, save_invstd, training=True)\n"
     "--\n"
     "\n"
     "batch_norm_relu_backward(x, gamma, y, grad_y, save_mean, save_invstd, training=True) -> (grad_x, grad_gamma, grad_beta, grad_residual)\n"
     "\n"
     "Gradients of batch_norm_relu from its output y (the ReLU mask y > 0) and grad_y.\n"
     "grad_residual = grad_y * (y > 0) (ignore it when no residual was added)."},
    {"relu", KW core_relu, METH_VARARGS | METH_KEYWORDS,
     "relu(x)\n"
     "--\n"
     "\n"
     "relu(x) -> y\n"
     "\n"
     "max(x, 0) elementwise, any shape."},
    {"relu_backward", KW core_relu_backward, METH_VARARGS | METH_KEYWORDS,
     "relu_backward(y, grad_y)\n"
     "--\n"
     "\n"
     "relu_backward(y, grad_y) -> grad_x\n"
     "\n"
     "grad_y * (y > 0); y is the output of relu (its input gives the same mask)."},
    {"add", KW core_add, METH_VARARGS | METH_KEYWORDS,
     "add(a, b)\n"
     "--\n"
     "\n"
     "add(a, b) -> y\n"
     "\n"
     "a + b for two arrays of one shape (no broadcasting). Its backward passes grad_y to both."},
    {"global_avg_pool", KW core_global_avg_pool, METH_VARARGS | METH_KEYWORDS,
     "global_avg_pool(x)\n"
     "--\n"
     "\n"
     "global_avg_pool(x) -> y\n"
     "\n"
     "Mean over H, W: x (N, C, H, W) -> y (N, C)."},
    {"global_avg_pool_backward", KW core_global_avg_pool_backward, METH_VARARGS | METH_KEYWORDS,
     "global_avg_pool_backward(grad_y, input_shape)\n"
     "--\n"
     "\n"
     "global_avg_pool_backward(grad_y, input_shape) -> grad_x\n"
     "\n"
     "grad_y (N, C) spread evenly over H, W; input_shape = (N, C, H, W)."},
    {"linear", KW core_linear, METH_VARARGS | METH_KEYWORDS,
     "linear(x, w, b=None)\n"
     "--\n"
     "\n"
     "linear(x, w, b=None) -> y\n"
     "\n"
     "y (N, O) = x (N, I) w (O, I)^T + b (O,), as torch.nn.functional.linear."},
    {"linear_backward", KW core_linear_backward, METH_VARARGS | METH_KEYWORDS,
     "linear_backward(x, w, grad_y)\n"
     "--\n"
     "\n"
     "linear_backward(x, w, grad_y) -> (grad_x, grad_w, grad_b)\n"
     "\n"
     "Gradients of linear given grad_y (N, O); grad_b (O,) = grad_y summed over N."},
    {"cross_entropy", KW core_cross_entropy, METH_VARARGS | METH_KEYWORDS,
     "cross_entropy(logits, labels)\n"
     "--\n"
     "\n"
     "cross_entropy(logits, labels) -> float\n"
     "\n"
     "Softmax cross-entropy, mean over the batch: logits (N, K), labels integer (N,) in [0, K)."},
    {"cross_entropy_backward", KW core_cross_entropy_backward, METH_VARARGS | METH_KEYWORDS,
     "cross_entropy_backward(logits, labels, grad=1.0)\n"
     "--\n"
     "\n"
     "cross_entropy_backward(logits, labels, grad=1.0) -> grad_logits\n"
     "\n"
     "grad * (softmax(logits) - onehot(labels)) / N, shape (N, K)."},
    {"sgd_step", KW core_sgd_step, METH_VARARGS | METH_KEYWORDS,
     "sgd_step(params, grads, momentum_buffer, lr, momentum=0.9, weight_decay=0.0, nesterov=False, dampening=0.0, first_step=False, segments=None)\n"
     "--\n"
     "\n"
     "sgd_step(params, grads, momentum_buffer, lr, momentum=0.9, weight_decay=0.0, nesterov=False, dampening=0.0, first_step=False, segments=None) -> None\n"
     "\n"
     "One torch.optim.SGD step, in place on params and momentum_buffer (float32, C-contiguous,\n"
     "writeable arrays of one shape, e.g. flat arenas; the buffer may be None when momentum=0).\n"
     "first_step=True initialises the buffer to the gradient as PyTorch does; with\n"
     "dampening=0 a zeroed buffer gives the same result either way.\n"
     "segments: None or a sequence of (n, lr_mult, wd_mult) covering params in order (flat\n"
     "index), each run using lr*lr_mult and weight_decay*wd_mult (PyTorch's param groups)."},
    {"ref_batch_norm_f64", KW core_ref_batch_norm_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_batch_norm_f64(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5)\n"
     "--\n"
     "\n"
     "ref_batch_norm_f64(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5) -> (y, save_mean, save_invstd)\n"
     "\n"
     "Naive float64 reference (tests); running stats must be float64 arrays."},
    {"ref_batch_norm_backward_f64", KW core_ref_batch_norm_backward_f64,
     METH_VARARGS | METH_KEYWORDS,
     "ref_batch_norm_backward_f64(x, gamma, grad_y, save_mean, save_invstd, training=True)\n"
     "--\n"
     "\n"
     "ref_batch_norm_backward_f64(x, gamma, grad_y, save_mean, save_invstd, training=True) -> (grad_x, grad_gamma, grad_beta)\n"
     "\n"
     "Naive float64 reference (tests)."},
    {"shift", KW core_shift, METH_VARARGS | METH_KEYWORDS,
     "shift(x, offsets, stride=1)\n"
     "--\n"
     "\n"
     "shift(x, offsets, stride=1) -> y\n"
     "\n"
     "Integer per-channel shift (SL, Wu et al.): y[n,c,Y,X] = x[n, c, stride*Y + dy_c,\n"
     "stride*X + dx_c], zero outside.  x (N, C, H, W) float32, offsets (C, 2) integer = (dy, dx),\n"
     "any magnitude -> y (N, C, (H-1)//stride+1, (W-1)//stride+1)."},
    {"shift_backward", KW core_shift_backward, METH_VARARGS | METH_KEYWORDS,
     "shift_backward(grad_y, offsets, input_shape, stride=1)\n"
     "--\n"
     "\n"
     "shift_backward(grad_y, offsets, input_shape, stride=1) -> grad_x\n"
     "\n"
     "The adjoint of shift: grad_x (input_shape) from grad_y = dL/dy."},
    {"default_shift_offsets", core_default_shift_offsets, METH_O,
     "default_shift_offsets(C)\n"
     "--\n"
     "\n"
     "default_shift_offsets(C) -> offsets\n"
     "\n"
     "The fixed 3x3 assignment of Wu et al. as int32 (C, 2) = (dy, dx): for c < 9*(C//9),\n"
     "dx = c%3 - 1, dy = (c//3)%3 - 1; the last C%9 channels are not shifted."},
    {"active_shift", KW core_active_shift, METH_VARARGS | METH_KEYWORDS,
     "active_shift(x, offsets, stride=1)\n"
     "--\n"
     "\n"
     "active_shift(x, offsets, stride=1) -> y\n"
     "\n"
     "Active shift (ASL, Jeon & Kim): y[n,c,Y,X] = bilinear sample of x[n,c] at\n"
     "(stride*Y + alpha_c, stride*X + beta_c), zero outside.  offsets (C, 2) float32 =\n"
     "(alpha, beta) = (dy, dx), finite.  Integer offsets give exactly shift(x, offsets)."},
    {"active_shift_backward", KW core_active_shift_backward, METH_VARARGS | METH_KEYWORDS,
     "active_shift_backward(x, offsets, grad_y, stride=1)\n"
     "--\n"
     "\n"
     "active_shift_backward(x, offsets, grad_y, stride=1) -> (grad_x, grad_offsets)\n"
     "\n"
     "Gradients of active_shift: grad_x (N, C, H, W) and the raw bilinear derivatives\n"
     "grad_offsets (C, 2) (right derivative at integer offsets; no normalisation)."},
    {"normalize_shift_grad", core_normalize_shift_grad, METH_O,
     "normalize_shift_grad(grad_offsets)\n"
     "--\n"
     "\n"
     "normalize_shift_grad(grad_offsets) -> array\n"
     "\n"
     "Each channel's (d/dalpha, d/dbeta) scaled to unit length (zero rows stay zero), as the\n"
     "reference ASL training does before its update.  Returns a new float32 (C, 2) array."},
    {"sal_conv2d", KW core_sal_conv2d, METH_VARARGS | METH_KEYWORDS,
     "sal_conv2d(x, w, logits, beta, stride=1, padding=1, hard=False, mask=None)\n"
     "--\n"
     "\n"
     "sal_conv2d(x, w, logits, beta, stride=1, padding=1, hard=False, mask=None) -> y\n"
     "\n"
     "Shift attention layer: p = softmax(beta * a / std(a)) over the 9 positions of each\n"
     "slice (unbiased std, no mean subtraction; std 0 or beta 0 give 1/9), hard: p > 0.5;\n"
     "y = conv2d(x, p * w, stride, padding 1).  x (N, C, H, W), w (O, C, 3, 3), logits\n"
     "(O, C, 9) unshared or (1, C, 9) shared, beta finite >= 0 -> y (N, O, Ho, Wo).\n"
     "mask: None, or 0/1 of the logits' shape: the allowed positions of each slice (>= 1);\n"
     "mean, std and softmax then run over the allowed positions only, p = 0 elsewhere."},
    {"sal_conv2d_backward", KW core_sal_conv2d_backward, METH_VARARGS | METH_KEYWORDS,
     "sal_conv2d_backward(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False, mask=None)\n"
     "--\n"
     "\n"
     "sal_conv2d_backward(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False, mask=None) -> (grad_x, grad_w, grad_logits)\n"
     "\n"
     "Gradients of sal_conv2d given grad_y = dL/dy.  grad_logits has the shape of logits;\n"
     "it is zero where std(a) = 0, for beta = 0, in hard mode (a step function) and at\n"
     "masked positions."},
    {"sal_probs", KW core_sal_probs, METH_VARARGS | METH_KEYWORDS,
     "sal_probs(logits, beta, hard=False, mask=None)\n"
     "--\n"
     "\n"
     "sal_probs(logits, beta, hard=False, mask=None) -> p\n"
     "\n"
     "The attention probabilities of sal_conv2d: p = softmax(beta * a / std(a)) over the last\n"
     "axis (size 9), same shape as logits; hard: (p > 0.5) as 0/1.  mask (0/1, the logits'\n"
     "shape): softmax over the allowed positions only, p = 0 elsewhere (see sal_conv2d)."},
    {"ref_active_shift_f64", KW core_ref_active_shift_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_active_shift_f64(x, offsets, stride=1)\n"
     "--\n"
     "\n"
     "ref_active_shift_f64(x, offsets, stride=1) -> y\n"
     "\n"
     "Naive float64 reference (tests)."},
    {"ref_active_shift_backward_f64", KW core_ref_active_shift_backward_f64,
     METH_VARARGS | METH_KEYWORDS,
     "ref_active_shift_backward_f64(x, offsets, grad_y, stride=1)\n"
     "--\n"
     "\n"
     "ref_active_shift_backward_f64(x, offsets, grad_y, stride=1) -> (grad_x, grad_offsets)\n"
     "\n"
     "Naive float64 reference (tests)."},
    {"ref_sal_conv2d_f64", KW core_ref_sal_conv2d_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_sal_conv2d_f64(x, w, logits, beta, stride=1, padding=1, hard=False, mask=None)\n"
     "--\n"
     "\n"
     "ref_sal_conv2d_f64(x, w, logits, beta, stride=1, padding=1, hard=False, mask=None) -> y\n"
     "\n"
     "Naive float64 reference (tests)."},
    {"ref_sal_conv2d_backward_f64", KW core_ref_sal_conv2d_backward_f64,
     METH_VARARGS | METH_KEYWORDS,
     "ref_sal_conv2d_backward_f64(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False, mask=None)\n"
     "--\n"
     "\n"
     "ref_sal_conv2d_backward_f64(x, w, logits, beta, grad_y, stride=1, padding=1, hard=False, mask=None) -> (grad_x, grad_w, grad_logits)\n"
     "\n"
     "Naive float64 reference (tests): full softmax and std Jacobians."},
    {"ref_sal_probs_f64", KW core_ref_sal_probs_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_sal_probs_f64(logits, beta, hard=False, mask=None)\n"
     "--\n"
     "\n"
     "ref_sal_probs_f64(logits, beta, hard=False, mask=None) -> p\n"
     "\n"
     "Naive float64 reference (tests)."},
    {"net_create", KW core_net_create, METH_VARARGS | METH_KEYWORDS,
     "net_create(shapes, ops, offsets, nparams, nbuffers)\n"
     "--\n"
     "\n"
     "net_create(shapes, ops, offsets, nparams, nbuffers) -> engine\n"
     "\n"
     "A network program (see salnp.models): buffer shapes (B, 3), op rows, int32 shift offsets."},
    {"net_forward", KW core_net_forward, METH_VARARGS | METH_KEYWORDS,
     "net_forward(net, params, buffers, x, train=False, hard=False, beta=1.0)\n"
     "--\n"
     "\n"
     "net_forward(net, params, buffers, x, train=False, hard=False, beta=1.0) -> logits\n"
     "\n"
     "Run the program; params and buffers are the arenas (buffers updated in training)."},
    {"net_backward", KW core_net_backward, METH_VARARGS | METH_KEYWORDS,
     "net_backward(net, params, grads, grad_logits)\n"
     "--\n"
     "\n"
     "net_backward(net, params, grads, grad_logits)\n"
     "\n"
     "Accumulate dL/dparams into grads for the last forward (SAL masks are read from the\n"
     "buffers array of that forward: keep it alive)."},
    {"net_count", KW core_net_count, METH_VARARGS | METH_KEYWORDS,
     "net_count(net, params, beta=1.0, inference=False, buffers=None)\n"
     "--\n"
     "\n"
     "net_count(net, params, beta=1.0, inference=False, buffers=None) -> (ints, params)\n"
     "\n"
     "Accounting of a network program per op (sal/count.h): ints int64 (nops, 13) with\n"
     "columns op, kind, in C, H, W, out C, H, W, train_only, kept, macs, bwd_macs,\n"
     "shift_moves (per image); params float64 (nops,).  inference=True: the network export\n"
     "builds (BN folded, SAL binarised with beta from the logits in params and the masks\n"
     "in buffers, needed when a SAL op has one)."},
    {"infer_create", KW core_infer_create, METH_VARARGS | METH_KEYWORDS,
     "infer_create(shapes, ops, shifts, pairs, nweights)\n"
     "--\n"
     "\n"
     "infer_create(shapes, ops, shifts, pairs, nweights) -> engine\n"
     "\n"
     "An inference program (see salnp.export): buffer shapes (B, 3), op rows (sal_iop),\n"
     "int32 shift rows (src, dy, dx), int32 SAL pairs (o, i, dy, dx)."},
    {"infer_forward", KW core_infer_forward, METH_VARARGS | METH_KEYWORDS,
     "infer_forward(net, weights, x)\n"
     "--\n"
     "\n"
     "infer_forward(net, weights, x) -> logits\n"
     "\n"
     "Run the inference program on x (N, C, H, W) with the weight arena."},
    {"infer_count", core_infer_count, METH_O,
     "infer_count(net)\n"
     "--\n"
     "\n"
     "infer_count(net) -> (ints, params)\n"
     "\n"
     "Accounting of an inference program, as net_count."},
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
