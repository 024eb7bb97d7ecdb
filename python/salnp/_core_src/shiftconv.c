/* salnp._core: the shifted-row GEMM of sal/shiftconv.h (shift + 1x1 convolution + fused
 * epilogue), float32 kernels and float64 reference twins. */
#include "binding.h"

#include <string.h>

/* New reference to obj as an int32 (R, 3) rows array (src, dy, dx): integer dtypes only,
 * values that fit int32 (the range of src is libsal's check). */
static PyArrayObject *as_rows_i32(PyObject *obj, const char *fn) {
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: rows must be an integer array (R, 3), got None", fn);
        return NULL;
    }
    PyArrayObject *raw = (PyArrayObject *)PyArray_FROM_O(obj), *wide = NULL, *a = NULL;
    if (raw == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: rows must be an integer array (R, 3), got %.100s", fn,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const int kind = PyArray_DESCR(raw)->kind;
    if (kind != 'i' && kind != 'u') {
        PyErr_Format(PyExc_TypeError, "%s: rows must be an integer array (R, 3) of (src, dy, dx), "
                     "got dtype %S", fn, (PyObject *)PyArray_DESCR(raw));
        goto done;
    }
    if (PyArray_NDIM(raw) != 2 || PyArray_DIM(raw, 1) != 3 || PyArray_DIM(raw, 0) < 1) {
        char sh[96];
        shape_str(sh, sizeof sh, raw);
        PyErr_Format(PyExc_ValueError, "%s: rows must have shape (R, 3) with R >= 1, got %s", fn,
                     sh);
        goto done;
    }
    /* widen (uint64 stays unsigned) and check the range before narrowing */
    const int u64 = kind == 'u' && PyArray_ITEMSIZE(raw) == 8;
    wide = (PyArrayObject *)PyArray_FromAny((PyObject *)raw,
                                            PyArray_DescrFromType(u64 ? NPY_UINT64 : NPY_INT64), 0,
                                            0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!wide) goto done;
    for (npy_intp i = 0; i < PyArray_SIZE(wide); i++) {
        const int fits = u64 ? ((const npy_uint64 *)PyArray_DATA(wide))[i] <= (npy_uint64)INT32_MAX
                              : ((const npy_int64 *)PyArray_DATA(wide))[i] >= INT32_MIN &&
                                    ((const npy_int64 *)PyArray_DATA(wide))[i] <= INT32_MAX;
        if (!fits) {
            PyErr_Format(PyExc_ValueError, "%s: rows[%lld, %lld]: must fit int32", fn,
                         (long long)(i / 3), (long long)(i % 3));
            goto done;
        }
    }
    a = (PyArrayObject *)PyArray_FromAny((PyObject *)wide, PyArray_DescrFromType(NPY_INT32), 0, 0,
                                         NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
                                             NPY_ARRAY_FORCECAST,
                                         NULL);
done:
    Py_XDECREF(raw);
    Py_XDECREF(wide);
    return a;
}

/* mode="auto" | "direct" | "panel" */
static int mode_arg(PyObject *obj, const char *fn, int *out) {
    static const char *const names[] = {"auto", "direct", "panel"};
    const char *s = obj && PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (obj == NULL) return 0;
    for (int i = 0; s && i < 3; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s: mode=%R: must be 'auto', 'direct' or 'panel'", fn, obj);
    return -1;
}

typedef struct {
    PyArrayObject *x, *rows, *w, *bias, *res, *gy;
    sal_shiftconv_desc d;
    sal_act y;
    int relu, res_post;
} sc_args;

static void sc_args_free(sc_args *a) {
    Py_XDECREF(a->x); Py_XDECREF(a->rows); Py_XDECREF(a->w); Py_XDECREF(a->bias);
    Py_XDECREF(a->res); Py_XDECREF(a->gy);
}

static int sc_args_parse(sc_args *a, PyObject *args, PyObject *kw, int typenum, const char *fn,
                         int backward) {
    static char *kw_fwd[] = {"x", "rows", "w", "bias", "res", "relu", "res_post", "stride",
                             "layout", "mode", NULL};
    static char *kw_bwd[] = {"x", "rows", "w", "grad_y", "stride", "layout", NULL};
    PyObject *ox, *orows, *ow, *obias = Py_None, *ores = Py_None, *ogy = NULL, *ostride = NULL;
    PyObject *omode = NULL;
    long long stride = 1;
    int mode = 0;
    layout_arg L = {fn, SAL_NCHW};
    memset(a, 0, sizeof *a);
    const int ok = backward
        ? PyArg_ParseTupleAndKeywords(args, kw, "OOOO|O$O&", kw_bwd, &ox, &orows, &ow, &ogy,
                                      &ostride, layout_converter, &L)
        : PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOppO$O&O", kw_fwd, &ox, &orows, &ow, &obias,
                                      &ores, &a->relu, &a->res_post, &ostride, layout_converter,
                                      &L, &omode);
    if (!ok || i64_arg(ostride, fn, "stride", &stride) || check_int_arg(stride, 1, fn, "stride") ||
        mode_arg(omode, fn, &mode))
        return -1;
    const int nchw = L.layout == SAL_NCHW;
    a->x = as_real(ox, typenum, fn, "x", 4, nchw ? "(N, C, H, W)" : "(C, N, H, W)");
    if (!a->x || !(a->rows = as_rows_i32(orows, fn))) return -1;
    a->w = as_real(ow, typenum, fn, "w", 2, "(O, R)");
    if (!a->w) return -1;
    const npy_intp R = PyArray_DIM(a->rows, 0), O = PyArray_DIM(a->w, 0);
    char expect[96];
    snprintf(expect, sizeof expect, "(O, R=%lld): one column per row", (long long)R);
    const npy_intp want_w[2] = {-1, R};
    if (require_shape(a->w, 2, want_w, fn, "w", expect)) return -1;
    a->d = (sal_shiftconv_desc){{PyArray_DIM(a->x, !nchw), PyArray_DIM(a->x, nchw),
                                 PyArray_DIM(a->x, 2), PyArray_DIM(a->x, 3), L.layout},
                                O, R, PyArray_DATA(a->rows), stride,
                                sal_get_num_threads(),   /* scratch is sized for these threads */
                                mode};
    if (refused(sal_shiftconv_check(&a->d, &a->y), fn)) return -1;
    const char *ydoc = nchw ? "(N, O, Ho, Wo)" : "(O, N, Ho, Wo)";
    if (backward) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, ydoc);
        return !a->gy || require_grad_y(a->gy, a->y, fn, ydoc) ? -1 : 0;
    }
    if (channel_vec(&a->bias, obias, typenum, 1, O, fn, "bias")) return -1;
    if (ores != Py_None) {
        a->res = as_real(ores, typenum, fn, "res", 4, ydoc);
        npy_intp dims[4];
        act_dims(a->y, dims);
        snprintf(expect, sizeof expect, "y's %s = (%lld, %lld, %lld, %lld)", ydoc,
                 (long long)dims[0], (long long)dims[1], (long long)dims[2], (long long)dims[3]);
        if (!a->res || require_shape(a->res, 4, dims, fn, "res", expect)) return -1;
    } else if (a->res_post) {
        PyErr_Format(PyExc_ValueError, "%s: res_post=True: needs res (the residual to add "
                     "after the ReLU)", fn);
        return -1;
    }
    return 0;
}

static PyObject *sc_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                            const char *fn) {
    sc_args a;
    PyArrayObject *y = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sc_args_parse(&a, args, kw, typenum, fn, 0)) goto done;
    npy_intp dims[4];
    act_dims(a.y, dims);
    y = new_empty(4, dims, typenum);
    if (!y || !(scratch = scratch_alloc(typenum == NPY_FLOAT32 ? sal_shiftconv_scratch(&a.d) : 0)))
        goto done;
    const sal_shiftconv_epi epi = {data_or_null(a.bias), data_or_null(a.res), a.relu, a.res_post};
    sal_status s;
    CALL_TYPED(s, typenum,
               sal_shiftconv_fwd(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), &epi, &a.d,
                                 scratch),
               sal_ref_shiftconv_fwd_f64(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w),
                                         data_or_null(a.bias), data_or_null(a.res), a.relu,
                                         a.res_post, &a.d));
    ret = take_result(m, s, fn, &y);
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(y);
    sc_args_free(&a);
    return ret;
}

static PyObject *sc_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                             const char *fn) {
    sc_args a;
    PyArrayObject *gx = NULL, *gw = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (sc_args_parse(&a, args, kw, typenum, fn, 1)) goto done;
    gx = new_array(4, PyArray_DIMS(a.x), typenum);
    gw = new_array(2, PyArray_DIMS(a.w), typenum);
    if (!gx || !gw ||
        !(scratch = scratch_alloc(typenum == NPY_FLOAT32 ? sal_shiftconv_bwd_scratch(&a.d) : 0)))
        goto done;
    void *gxs = PyArray_DATA(gx), *gws = PyArray_DATA(gw), *gys = PyArray_DATA(a.gy),
         *xs = PyArray_DATA(a.x), *ws = PyArray_DATA(a.w);
    sal_status s;
    CALL_TYPED(s, typenum, sal_shiftconv_bwd(gxs, gws, gys, xs, ws, &a.d, scratch),
               sal_ref_shiftconv_bwd_f64(gxs, gws, gys, xs, ws, &a.d));
    if (failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(NN)", gx, gw);
    gx = gw = NULL;
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(gx); Py_XDECREF(gw);
    sc_args_free(&a);
    return ret;
}

WRAP(shift_conv1x1, sc_forward, NPY_FLOAT32)
PyDoc_STRVAR(shift_conv1x1_doc,
    DOC("shift_conv1x1(x, rows, w, bias=None, res=None, relu=False, res_post=False, stride=1, *, "
        "layout='NCHW', mode='auto')", " -> y",
        "A shift and the 1x1 convolution that reads it, in one kernel (no shifted copy):\n"
        "y[n,o,Y,X] = epi(sum_r w[o,r] * x[n, src_r, stride*Y + dy_r, stride*X + dx_r]),\n"
        "zero outside the image.  x (N, C, H, W) float32, rows (R, 3) integer = (src, dy, dx)\n"
        "with src in [0, C) and any offsets (a channel may appear in several rows or none),\n"
        "w (O, R) -> y (N, O, (H-1)//stride+1, (W-1)//stride+1).  Epilogue per channel o:\n"
        "v = acc + bias[o]; res and not res_post: v += res; relu: v = max(v, 0); res and\n"
        "res_post: v += res.  layout='CNHW': x (C, N, H, W), res and y (O, N, Ho, Wo).\n"
        "mode: how the kernel reads x ('direct' in place, 'panel' through cache-sized copies,\n"
        "'auto' by size); the result is the same."));

WRAP(shift_conv1x1_backward, sc_backward, NPY_FLOAT32)
PyDoc_STRVAR(shift_conv1x1_backward_doc,
    DOC("shift_conv1x1_backward(x, rows, w, grad_y, stride=1, *, layout='NCHW')",
        " -> (grad_x, grad_w)",
        "Gradients of shift_conv1x1 without epilogue (y = w . X~) given grad_y = dL/dy:\n"
        "grad_x (x's shape) and grad_w (O, R)."));

WRAP(ref_shift_conv1x1_f64, sc_forward, NPY_FLOAT64)
PyDoc_STRVAR(ref_shift_conv1x1_f64_doc,
    DOC("ref_shift_conv1x1_f64(x, rows, w, bias=None, res=None, relu=False, res_post=False, "
        "stride=1, *, layout='NCHW', mode='auto')", " -> y",
        "Naive float64 reference (tests); mode is ignored."));

WRAP(ref_shift_conv1x1_backward_f64, sc_backward, NPY_FLOAT64)
PyDoc_STRVAR(ref_shift_conv1x1_backward_f64_doc,
    DOC("ref_shift_conv1x1_backward_f64(x, rows, w, grad_y, stride=1, *, layout='NCHW')",
        " -> (grad_x, grad_w)", "Naive float64 reference (tests)."));

PyMethodDef core_shiftconv_methods[] = {
    KW_METHOD("shift_conv1x1", core_shift_conv1x1, shift_conv1x1_doc),
    KW_METHOD("shift_conv1x1_backward", core_shift_conv1x1_backward, shift_conv1x1_backward_doc),
    KW_METHOD("ref_shift_conv1x1_f64", core_ref_shift_conv1x1_f64, ref_shift_conv1x1_f64_doc),
    KW_METHOD("ref_shift_conv1x1_backward_f64", core_ref_shift_conv1x1_backward_f64,
              ref_shift_conv1x1_backward_f64_doc),
    {NULL, NULL, 0, NULL}};
