/* salnp._core: dataset parsers and batches (sal/data.h). */
#include "binding.h"

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

/* Format errors of the parsers: SalError carrying the parser's message (the caller,
 * salnp.data, adds the file name). */
static int format_failed(PyObject *m, sal_status s, const char *fn) {
    if (s != SAL_EFORMAT) return failed(m, s, fn);
    PyErr_Format(core_get_state(m)->error, "%s", sal_last_error());
    return -1;
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
    if (format_failed(m, sal_cifar_count((size_t)buf.len, (int)L, &n), fn)) goto done;
    npy_intp di[4] = {n, SAL_CIFAR_C, SAL_CIFAR_H, SAL_CIFAR_W}, dl[2] = {n, L};
    img = new_empty(4, di, NPY_UINT8);
    lab = new_empty(2, dl, NPY_INT32);
    if (!img || !lab) goto done;
    sal_status s;
    CALL_NOGIL(s, sal_cifar_parse(buf.buf, (size_t)buf.len, (int)L, nc, PyArray_DATA(img),
                                  (size_t)PyArray_SIZE(img), PyArray_DATA(lab),
                                  (size_t)PyArray_SIZE(lab)));
    if (format_failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(NN)", img, lab);
    img = lab = NULL;
done:
    Py_XDECREF(seq); Py_XDECREF(img); Py_XDECREF(lab);
    PyBuffer_Release(&buf);
    return ret;
}
PyDoc_STRVAR(parse_cifar_doc,
    DOC("_parse_cifar(data, num_classes)", " -> (images, labels)",
        "CIFAR binary records (len(num_classes) label bytes + 3072 pixels) from a bytes-like\n"
        "object: images uint8 (N, 3, 32, 32), labels int32 (N, len(num_classes)).\n"
        "Raises SalError on a malformed buffer (salnp.data adds the file name)."));

static PyObject *core_parse_idx(PyObject *m, PyObject *arg) {
    const char *fn = "_parse_idx";
    Py_buffer buf = {0};
    PyArrayObject *a = NULL;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    sal_idx_info info;
    if (!format_failed(m, sal_idx_header(buf.buf, (size_t)buf.len, &info), fn)) {
        npy_intp dims[SAL_IDX_MAX_DIMS];
        for (int k = 0; k < info.ndim; k++) dims[k] = (npy_intp)info.dims[k];
        a = new_empty(info.ndim, dims, NPY_UINT8);
    }
    if (a) {
        sal_status s;
        CALL_NOGIL(s, sal_idx_parse_u8(buf.buf, (size_t)buf.len, &info, PyArray_DATA(a),
                                       (size_t)PyArray_SIZE(a)));
        if (format_failed(m, s, fn)) Py_CLEAR(a);
    }
    PyBuffer_Release(&buf);
    return (PyObject *)a;
}
PyDoc_STRVAR(parse_idx_doc,
    DOC("_parse_idx(data)", " -> array",
        "IDX unsigned-byte data from a bytes-like object, shaped by its header (uint8)."));

static PyObject *core_permutation(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"n", "seed", "epoch", NULL};
    const char *fn = "_permutation";
    long long n = 0;
    PyObject *on, *oseed, *oepoch;
    uint64_t seed, epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &on, &oseed, &oepoch) ||
        i64_arg(on, fn, "n", &n) || check_int_arg(n, 1, fn, "n") ||
        u64_arg(oseed, fn, "seed", &seed) || u64_arg(oepoch, fn, "epoch", &epoch))
        return NULL;
    npy_intp dims[1] = {(npy_intp)n};
    PyArrayObject *p = new_empty(1, dims, NPY_INT64);
    if (!p) return NULL;
    sal_status s;
    CALL_NOGIL(s, sal_permutation(PyArray_DATA(p), n, seed, epoch));
    if (failed(m, s, fn)) Py_CLEAR(p);
    return (PyObject *)p;
}
PyDoc_STRVAR(permutation_doc,
    DOC("_permutation(n, seed, epoch)", " -> int64 (n,)",
        "A permutation of range(n), a pure function of (n, seed, epoch)."));

static PyObject *core_batch_augment(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"index", "pad", "flip", "seed", "epoch", NULL};
    const char *fn = "_batch_augment";
    PyObject *oindex, *opad, *oseed, *oepoch;
    long long pad = 0;
    int flip;
    uint64_t seed, epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOpOO", kwlist, &oindex, &opad, &flip, &oseed,
                                     &oepoch) ||
        i64_arg(opad, fn, "pad", &pad) || u64_arg(oseed, fn, "seed", &seed) ||
        u64_arg(oepoch, fn, "epoch", &epoch))
        return NULL;
    PyArrayObject *idx = as_index(oindex, fn, "index");
    if (!idx) return NULL;
    const float zero = 0.0f, one = 1.0f;
    sal_batch_desc d = {1, 1, 1, &zero, &one, pad, flip, seed, epoch, SAL_NCHW};
    npy_intp dims[2] = {PyArray_DIM(idx, 0), 3};
    PyArrayObject *aug = new_empty(2, dims, NPY_INT32);
    if (aug && failed(m, sal_batch_augment(PyArray_DATA(aug), PyArray_DATA(idx), dims[0], &d), fn))
        Py_CLEAR(aug);
    Py_DECREF(idx);
    return (PyObject *)aug;
}
PyDoc_STRVAR(batch_augment_doc,
    DOC("_batch_augment(index, pad, flip, seed, epoch)", " -> int32 (B, 3)",
        "The (dy, dx, flip) that _make_batch draws for each sample: crop offsets in the\n"
        "zero-padded image, in [0, 2*pad], and the flip bit."));

/* images: a 4-D uint8 array (N, C, H, W), C-contiguous and aligned, no zero dimension */
static PyArrayObject *as_images(PyObject *obj, const char *fn) {
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!raw) return NULL;
    if (PyArray_TYPE(raw) != NPY_UINT8 || PyArray_NDIM(raw) != 4) {
        PyErr_Format(PyArray_TYPE(raw) != NPY_UINT8 ? PyExc_TypeError : PyExc_ValueError,
                     "%s: images must be a 4-D uint8 array (N, C, H, W), got dtype %S with %d "
                     "dimension(s)",
                     fn, (PyObject *)PyArray_DESCR(raw), PyArray_NDIM(raw));
        Py_DECREF(raw);
        return NULL;
    }
    PyArrayObject *img = (PyArrayObject *)PyArray_FromAny(
        (PyObject *)raw, PyArray_DescrFromType(NPY_UINT8), 4, 4,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    Py_DECREF(raw);
    if (img && PyArray_SIZE(img) == 0) {
        PyErr_Format(PyExc_ValueError, "%s: images has a zero-size dimension", fn);
        Py_CLEAR(img);
    }
    return img;
}

static PyObject *core_make_batch(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", "index", "mean", "std", "pad", "flip", "seed",
                             "epoch", "layout", "out", NULL};
    const char *fn = "_make_batch";
    PyObject *oimg, *oindex, *omean, *ostd, *opad = NULL, *oseed = NULL, *oepoch = NULL,
             *oout = Py_None;
    long long pad = 0;
    int flip = 0;
    layout_arg L = {fn, SAL_NCHW};
    uint64_t seed = 0, epoch = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|OpOOO&O", kwlist, &oimg, &oindex, &omean,
                                     &ostd, &opad, &flip, &oseed, &oepoch, layout_converter, &L,
                                     &oout) ||
        i64_arg(opad, fn, "pad", &pad) || u64_arg(oseed, fn, "seed", &seed) ||
        u64_arg(oepoch, fn, "epoch", &epoch) || check_int_arg(pad, 0, fn, "pad"))
        return NULL;
    PyArrayObject *img = NULL, *idx = NULL, *mean = NULL, *std = NULL, *out = NULL;
    PyObject *ret = NULL;
    img = as_images(oimg, fn);
    if (!img) goto done;
    idx = as_index(oindex, fn, "index");
    if (!idx) goto done;
    const npy_intp N = PyArray_DIM(img, 0), C = PyArray_DIM(img, 1), H = PyArray_DIM(img, 2),
                   W = PyArray_DIM(img, 3), B = PyArray_DIM(idx, 0);
    if (channel_vec(&mean, omean, NPY_FLOAT32, 0, C, fn, "mean") ||
        channel_vec(&std, ostd, NPY_FLOAT32, 0, C, fn, "std"))
        goto done;
    const sal_act batch = {B, C, H, W, L.layout};
    npy_intp dims[4];
    act_dims(batch, dims);
    if (oout == Py_None) {
        out = new_empty(4, dims, NPY_FLOAT32);
        if (!out) goto done;
    } else {
        char expect[96];
        snprintf(expect, sizeof expect, "(%lld, %lld, %lld, %lld) for layout %s",
                 (long long)dims[0], (long long)dims[1], (long long)dims[2], (long long)dims[3],
                 L.layout == SAL_NCHW ? "NCHW" : "CNHW");
        out = as_inplace_ex(oout, NPY_FLOAT32, fn, "out", 4, "(B, C, H, W) or (C, B, H, W)",
                            PyExc_TypeError);
        if (!out || require_shape(out, 4, dims, fn, "out", expect)) goto done;
    }
    sal_batch_desc d = {C, H, W, PyArray_DATA(mean), PyArray_DATA(std), pad, flip, seed, epoch,
                        L.layout};
    sal_status s;
    CALL_NOGIL(s, sal_make_batch(PyArray_DATA(out), PyArray_DATA(img), N, PyArray_DATA(idx), B,
                                 &d));
    ret = take_result(m, s, fn, &out);
done:
    Py_XDECREF(img); Py_XDECREF(idx); Py_XDECREF(mean); Py_XDECREF(std); Py_XDECREF(out);
    return ret;
}
PyDoc_STRVAR(make_batch_doc,
    DOC("_make_batch(images, index, mean, std, pad=0, flip=False, seed=0, epoch=0, layout='NCHW', out=None)", " -> out",
        "float32 batch (B, C, H, W) (or (C, B, H, W) for layout='CNHW') from uint8 images\n"
        "(N, C, H, W) at index: zero-pad by pad, random crop back to H x W, horizontal flip\n"
        "with p = 0.5 when flip, then (v/255 - mean) / std.  Written into out when given."));

PyMethodDef core_data_methods[] = {
    KW_METHOD("_parse_cifar", core_parse_cifar, parse_cifar_doc),
    {"_parse_idx", core_parse_idx, METH_O, parse_idx_doc},
    KW_METHOD("_permutation", core_permutation, permutation_doc),
    KW_METHOD("_batch_augment", core_batch_augment, batch_augment_doc),
    KW_METHOD("_make_batch", core_make_batch, make_batch_doc),
    {NULL, NULL, 0, NULL}};
