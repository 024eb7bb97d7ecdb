/* salnp._core: argument converters and checks, libsal status -> Python exception. */
#include "binding.h"

#include <math.h>
#include <string.h>

PyObject *raise_status(PyObject *module, sal_status s, const char *fn) {
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
        PyErr_Format(core_get_state(module)->error, "%s: %s: %s", fn, sal_status_name(s), msg);
    }
    return NULL;
}

int failed(PyObject *module, sal_status s, const char *fn) {
    if (s == SAL_OK) return 0;
    raise_status(module, s, fn);
    return -1;
}

PyObject *take_result(PyObject *module, sal_status s, const char *fn, PyArrayObject **y) {
    if (failed(module, s, fn)) return NULL;
    PyObject *ret = (PyObject *)*y;
    *y = NULL;
    return ret;
}

int refused(sal_status s, const char *fn) {
    if (s == SAL_OK) return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s", fn, sal_last_error());
    return -1;
}

/* ---- arrays ---------------------------------------------------------------------- */

void shape_str(char *buf, size_t n, PyArrayObject *a) {
    size_t len = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < PyArray_NDIM(a) && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, i ? ", %lld" : "%lld",
                                (long long)PyArray_DIM(a, i));
    if (len < n) snprintf(buf + len, n - len, PyArray_NDIM(a) == 1 ? ",)" : ")");
}

PyArrayObject *as_real(PyObject *obj, int typenum, const char *fn, const char *arg, int ndim,
                       const char *dims_doc) {
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

PyArrayObject *as_f32(PyObject *obj, const char *fn, const char *arg, int ndim,
                      const char *dims_doc) {
    return as_real(obj, NPY_FLOAT32, fn, arg, ndim, dims_doc);
}

PyArrayObject *as_inplace(PyObject *obj, int typenum, const char *fn, const char *arg, int ndim,
                          const char *dims_doc) {
    return as_inplace_ex(obj, typenum, fn, arg, ndim, dims_doc, PyExc_ValueError);
}

PyArrayObject *as_inplace_ex(PyObject *obj, int typenum, const char *fn, const char *arg,
                             int ndim, const char *dims_doc, PyObject *exc) {
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
        PyErr_Format(exc, "%s: %s must have dtype %s in native byte order (it is "
                     "updated in place, never copied), got dtype %S", fn, arg, tname,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(exc, "%s: %s must be C-contiguous and aligned (it is updated in "
                     "place, never copied)", fn, arg);
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(a)) {
        PyErr_Format(exc, "%s: %s must be writeable (it is updated in place)", fn, arg);
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

int require_shape(PyArrayObject *a, int nd, const npy_intp *want, const char *fn,
                  const char *arg, const char *expected) {
    int ok = PyArray_NDIM(a) == nd;
    for (int i = 0; ok && i < nd; i++) ok = want[i] < 0 || PyArray_DIM(a, i) == want[i];
    if (ok) return 0;
    char sh[96];
    shape_str(sh, sizeof sh, a);
    PyErr_Format(PyExc_ValueError, "%s: %s must have shape %s, got %s", fn, arg, expected, sh);
    return -1;
}

int same_shape(PyArrayObject *a, PyArrayObject *b, const char *fn, const char *aname,
               const char *bname) {
    char sh[96], expect[128];
    shape_str(sh, sizeof sh, a);
    snprintf(expect, sizeof expect, "%s (the shape of %s)", sh, aname);
    return require_shape(b, PyArray_NDIM(a), PyArray_DIMS(a), fn, bname, expect);
}

int channel_vec(PyArrayObject **out, PyObject *obj, int typenum, int may_be_none, npy_intp C,
                const char *fn, const char *arg) {
    *out = NULL;
    if (may_be_none && obj == Py_None) return 0;
    *out = as_real(obj, typenum, fn, arg, 1, "(C,)");
    if (!*out) return -1;
    char expect[48];
    snprintf(expect, sizeof expect, "(C,) = (%lld,)", (long long)C);
    return require_shape(*out, 1, &C, fn, arg, expect);
}

PyArrayObject *new_array(int nd, const npy_intp *dims, int typenum) {
    return (PyArrayObject *)PyArray_ZEROS(nd, (npy_intp *)dims, typenum, 0);
}

PyArrayObject *new_empty(int nd, const npy_intp *dims, int typenum) {
    return (PyArrayObject *)PyArray_EMPTY(nd, (npy_intp *)dims, typenum, 0);
}

float *scratch_alloc(size_t nfloats) {
    float *p = (float *)PyMem_RawMalloc(nfloats ? nfloats * sizeof(float) : 1);
    if (p == NULL) PyErr_NoMemory();
    return p;
}

/* ---- scalars and shapes ---------------------------------------------------------- */

int check_int_arg(long long v, long long lo, const char *fn, const char *arg) {
    if (v >= lo) return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s=%lld: must be >= %lld", fn, arg, v, lo);
    return -1;
}

/* PyNumber_Index(obj), or NULL with "fn: arg must be an integer, got T" */
static PyObject *as_index_object(PyObject *obj, const char *fn, const char *arg) {
    PyObject *i = PyNumber_Index(obj);
    if (i == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be an integer, got %.100s", fn, arg,
                     Py_TYPE(obj)->tp_name);
    }
    return i;
}

/* Sizes, strides, pads: ValueError naming fn and arg outside int64 (PyArg's "L" raised a
 * bare OverflowError there). */
int i64_arg(PyObject *obj, const char *fn, const char *arg, long long *out) {
    if (obj == NULL) return 0;
    PyObject *i = as_index_object(obj, fn, arg);
    if (i == NULL) return -1;
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

/* Seeds, epochs. */
int u64_arg(PyObject *obj, const char *fn, const char *arg, uint64_t *out) {
    if (obj == NULL) return 0;
    PyObject *i = as_index_object(obj, fn, arg);
    if (i == NULL) return -1;
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

/* Betas, rates, eps: any real number (int, float, NumPy scalar); TypeError naming fn and
 * arg otherwise, ValueError for an int too large for a double. */
int f64_arg(PyObject *obj, const char *fn, const char *arg, double *out) {
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

int check_beta(double beta, const char *fn) {
    if (isfinite(beta) && beta >= 0.0) return 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%g", beta);  /* PyErr_Format has no %g */
    PyErr_Format(PyExc_ValueError, "%s: beta=%s: must be finite and >= 0", fn, buf);
    return -1;
}

int parse_shape4(PyObject *obj, const char *fn, const char *arg, npy_intp out[4]) {
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != 4) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a sequence of 4 ints (N, C, H, W)", fn, arg);
        Py_XDECREF(seq);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        long long v = 0;
        char name[64];
        snprintf(name, sizeof name, "%s[%d]", arg, i);
        if (i64_arg(PySequence_Fast_GET_ITEM(seq, i), fn, name, &v) ||
            check_int_arg(v, 1, fn, name)) {
            Py_DECREF(seq);
            return -1;
        }
        out[i] = (npy_intp)v;
    }
    Py_DECREF(seq);
    /* the array of that shape must be addressable: N*C*H*W*8 < 2**63 */
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

int layout_converter(PyObject *obj, void *out) {
    layout_arg *la = (layout_arg *)out;
    const char *name = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (name && strcmp(name, "NCHW") == 0) la->layout = SAL_NCHW;
    else if (name && strcmp(name, "CNHW") == 0) la->layout = SAL_CNHW;
    else {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: layout=%R: must be 'NCHW' or 'CNHW'", la->fn, obj);
        return 0;
    }
    return 1;
}

sal_act act_nchw(PyArrayObject *x) {
    return (sal_act){PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2), PyArray_DIM(x, 3),
                     SAL_NCHW};
}

sal_act act_flat(PyArrayObject *x) { return (sal_act){1, PyArray_SIZE(x), 1, 1, SAL_NCHW}; }

void act_dims(sal_act a, npy_intp dims[4]) {
    dims[0] = a.layout == SAL_NCHW ? a.n : a.c;
    dims[1] = a.layout == SAL_NCHW ? a.c : a.n;
    dims[2] = a.h;
    dims[3] = a.w;
}

int require_grad_y(PyArrayObject *gy, sal_act y, const char *fn, const char *what) {
    char expect[128];
    npy_intp want[4];
    act_dims(y, want);
    snprintf(expect, sizeof expect, "%s = (%lld, %lld, %lld, %lld)", what, (long long)want[0],
             (long long)want[1], (long long)want[2], (long long)want[3]);
    return require_shape(gy, 4, want, fn, "grad_y", expect);
}
