/* salnp._core: the only file that knows CPython and NumPy.
 *
 * Every function converts its array arguments to float32, C-contiguous and aligned
 * (a copy where needed: inputs are never written), checks shapes with messages that
 * name the function and the argument, allocates its outputs and scratch with the GIL
 * held, and releases the GIL only around the pure C work. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

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
                           PyArray_DIM(a->w, 0), K, stride, padding};
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
     "conv2d(x, w, stride=1, padding=0, *, layout='NCHW') -> y\n--\n\n"
     "Cross-correlation as torch.nn.functional.conv2d, no bias.\n"
     "x (N, C, H, W), w (O, C, K, K) -> y (N, O, Ho, Wo), float32.\n"
     "layout='CNHW': x is channel-major (C, N, H, W) and so is y (O, N, Ho, Wo);\n"
     "a 1x1 convolution is then one GEMM over the whole batch."},
    {"conv2d_backward", KW core_conv2d_backward, METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward(x, w, grad_y, stride=1, padding=0, *, layout='NCHW') -> (grad_x, grad_w)\n--\n\n"
     "Gradients of conv2d with respect to x and w, given grad_y = dL/dy."},
    {"ref_conv2d_f64", KW core_ref_conv2d_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_conv2d_f64(x, w, stride=1, padding=0) -> y\n--\n\nNaive float64 reference (tests)."},
    {"ref_conv2d_backward_f64", KW core_ref_conv2d_backward_f64, METH_VARARGS | METH_KEYWORDS,
     "ref_conv2d_backward_f64(x, w, grad_y, stride=1, padding=0) -> (grad_x, grad_w)\n--\n\n"
     "Naive float64 reference (tests)."},
    {"_parse_cifar", KW core_parse_cifar, METH_VARARGS | METH_KEYWORDS,
     "_parse_cifar(data, num_classes) -> (images, labels)\n--\n\n"
     "CIFAR binary records (len(num_classes) label bytes + 3072 pixels) from a bytes-like\n"
     "object: images uint8 (N, 3, 32, 32), labels int32 (N, len(num_classes)).\n"
     "Raises SalError on a malformed buffer (salnp.data adds the file name)."},
    {"_parse_idx", core_parse_idx, METH_O,
     "_parse_idx(data) -> array\n--\n\n"
     "IDX unsigned-byte data from a bytes-like object, shaped by its header (uint8)."},
    {"_permutation", KW core_permutation, METH_VARARGS | METH_KEYWORDS,
     "_permutation(n, seed, epoch) -> int64 (n,)\n--\n\n"
     "A permutation of range(n), a pure function of (n, seed, epoch)."},
    {"_batch_augment", KW core_batch_augment, METH_VARARGS | METH_KEYWORDS,
     "_batch_augment(index, pad, flip, seed, epoch) -> int32 (B, 3)\n--\n\n"
     "The (dy, dx, flip) that _make_batch draws for each sample: crop offsets in the\n"
     "zero-padded image, in [0, 2*pad], and the flip bit."},
    {"_make_batch", KW core_make_batch, METH_VARARGS | METH_KEYWORDS,
     "_make_batch(images, index, mean, std, pad=0, flip=False, seed=0, epoch=0,\n"
     "            layout='NCHW', out=None) -> out\n--\n\n"
     "float32 batch (B, C, H, W) (or (C, B, H, W) for layout='CNHW') from uint8 images\n"
     "(N, C, H, W) at index: zero-pad by pad, random crop back to H x W, horizontal flip\n"
     "with p = 0.5 when flip, then (v/255 - mean) / std.  Written into out when given."},
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
