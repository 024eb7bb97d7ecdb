/* salnp._core: convolution (sal/conv.h), float32 kernels and float64 reference twins. */
#include "binding.h"

#include <string.h>

/* (x, w, [grad_y,] stride, padding, layout[, grad_x, grad_w]) as arrays of typenum and a
 * descriptor; want_x, want_w: which gradients the backward computes */
typedef struct {
    PyArrayObject *x, *w, *gy;
    sal_conv_desc d;
    sal_act y;
    int want_x, want_w;
} conv_args;

static void conv_args_free(conv_args *a) {
    Py_XDECREF(a->x); Py_XDECREF(a->w); Py_XDECREF(a->gy);
}

/* Parses the call for conv2d (backward: with grad_y) and its reference twins. */
static int conv_args_parse(conv_args *a, PyObject *args, PyObject *kw, int typenum,
                           const char *fn, int backward) {
    static char *kw_fwd[] = {"x", "w", "stride", "padding", "layout", NULL};
    static char *kw_bwd[] = {"x", "w", "grad_y", "stride", "padding", "layout", "grad_x",
                             "grad_w", NULL};
    PyObject *ox, *ow, *ogy = NULL, *ostride = NULL, *opadding = NULL;
    long long stride = 1, padding = 0;
    layout_arg L = {fn, SAL_NCHW};
    memset(a, 0, sizeof *a);
    a->want_x = a->want_w = 1;
    int ok = backward ? PyArg_ParseTupleAndKeywords(args, kw, "OOO|OO$O&pp", kw_bwd, &ox, &ow,
                                                    &ogy, &ostride, &opadding, layout_converter,
                                                    &L, &a->want_x, &a->want_w)
                      : PyArg_ParseTupleAndKeywords(args, kw, "OO|OO$O&", kw_fwd, &ox, &ow,
                                                    &ostride, &opadding, layout_converter, &L);
    if (!ok || i64_arg(ostride, fn, "stride", &stride) ||
        i64_arg(opadding, fn, "padding", &padding) || check_int_arg(stride, 1, fn, "stride") ||
        check_int_arg(padding, 0, fn, "padding"))
        return -1;
    const int nchw = L.layout == SAL_NCHW;
    a->x = as_real(ox, typenum, fn, "x", 4, nchw ? "(N, C, H, W)" : "(C, N, H, W)");
    if (!a->x) return -1;
    a->w = as_real(ow, typenum, fn, "w", 4, "(O, C, K, K)");
    if (!a->w) return -1;
    npy_intp C = PyArray_DIM(a->x, nchw), K = PyArray_DIM(a->w, 2);
    char expect[96];
    snprintf(expect, sizeof expect, "(O, C=%lld, K, K) with a square kernel", (long long)C);
    npy_intp want_w[4] = {-1, C, K, K};
    if (require_shape(a->w, 4, want_w, fn, "w", expect)) return -1;
    a->d = (sal_conv_desc){{PyArray_DIM(a->x, !nchw), C, PyArray_DIM(a->x, 2),
                            PyArray_DIM(a->x, 3), L.layout},
                           PyArray_DIM(a->w, 0), K, stride, padding,
                           sal_get_num_threads()};  /* scratch is sized for these threads */
    if (refused(sal_conv_check(&a->d, &a->y), fn)) return -1;
    if (backward) {
        a->gy = as_real(ogy, typenum, fn, "grad_y", 4, "like y");
        if (!a->gy ||
            require_grad_y(a->gy, a->y, fn, nchw ? "(N, O, Ho, Wo)" : "(O, N, Ho, Wo)"))
            return -1;
    }
    return 0;
}

/* float32 scratch for the fast kernel; none (a 1-float block) for the reference */
static float *conv_scratch(const conv_args *a, int typenum) {
    return scratch_alloc(typenum == NPY_FLOAT32 ? sal_conv_scratch(&a->d) : 0);
}

static PyObject *conv_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                              const char *fn) {
    conv_args a;
    PyArrayObject *y = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, args, kw, typenum, fn, 0)) goto done;
    npy_intp dims[4];
    act_dims(a.y, dims);
    y = new_empty(4, dims, typenum);
    if (!y || !(scratch = conv_scratch(&a, typenum))) goto done;
    sal_status s;
    CALL_TYPED(s, typenum,
               sal_conv_fwd(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d, scratch),
               sal_ref_conv_fwd_f64(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d));
    ret = take_result(m, s, fn, &y);
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(y);
    conv_args_free(&a);
    return ret;
}

static PyObject *conv_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                               const char *fn) {
    conv_args a;
    PyArrayObject *gx = NULL, *gw = NULL;
    float *scratch = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, args, kw, typenum, fn, 1)) goto done;
    if (a.want_x && !(gx = new_array(4, PyArray_DIMS(a.x), typenum))) goto done;
    if (a.want_w && !(gw = new_array(4, PyArray_DIMS(a.w), typenum))) goto done;
    if (!(scratch = conv_scratch(&a, typenum))) goto done;
    sal_status s;
    CALL_TYPED(s, typenum,
               sal_conv_bwd(data_or_null(gx), data_or_null(gw), PyArray_DATA(a.gy),
                            PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d, scratch),
               sal_ref_conv_bwd_f64(data_or_null(gx), data_or_null(gw), PyArray_DATA(a.gy),
                                    PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d));
    if (failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(OO)", gx ? (PyObject *)gx : Py_None, gw ? (PyObject *)gw : Py_None);
done:
    PyMem_RawFree(scratch);
    Py_XDECREF(gx); Py_XDECREF(gw);
    conv_args_free(&a);
    return ret;
}

/* the naive Winograd twins (sal_ref_wino_*), float32 (typenum NPY_FLOAT32) or float64 */
static PyObject *wino_forward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                              const char *fn) {
    conv_args a;
    PyArrayObject *y = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, args, kw, typenum, fn, 0)) goto done;
    npy_intp dims[4];
    act_dims(a.y, dims);
    y = new_empty(4, dims, typenum);
    if (!y) goto done;
    sal_status s;
    CALL_TYPED(s, typenum,
               sal_ref_wino_fwd(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d),
               sal_ref_wino_fwd_f64(PyArray_DATA(y), PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d));
    ret = take_result(m, s, fn, &y);
done:
    Py_XDECREF(y);
    conv_args_free(&a);
    return ret;
}

static PyObject *wino_backward(PyObject *m, PyObject *args, PyObject *kw, int typenum,
                               const char *fn) {
    conv_args a;
    PyArrayObject *gx = NULL, *gw = NULL;
    PyObject *ret = NULL;
    if (conv_args_parse(&a, args, kw, typenum, fn, 1)) goto done;
    if (a.want_x && !(gx = new_array(4, PyArray_DIMS(a.x), typenum))) goto done;
    if (a.want_w && !(gw = new_array(4, PyArray_DIMS(a.w), typenum))) goto done;
    sal_status s;
    CALL_TYPED(s, typenum,
               sal_ref_wino_bwd(data_or_null(gx), data_or_null(gw), PyArray_DATA(a.gy),
                                PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d),
               sal_ref_wino_bwd_f64(data_or_null(gx), data_or_null(gw), PyArray_DATA(a.gy),
                                    PyArray_DATA(a.x), PyArray_DATA(a.w), &a.d));
    if (failed(m, s, fn)) goto done;
    ret = Py_BuildValue("(OO)", gx ? (PyObject *)gx : Py_None, gw ? (PyObject *)gw : Py_None);
done:
    Py_XDECREF(gx); Py_XDECREF(gw);
    conv_args_free(&a);
    return ret;
}

WRAP(conv2d, conv_forward, NPY_FLOAT32)
PyDoc_STRVAR(conv2d_doc,
    DOC("conv2d(x, w, stride=1, padding=0, *, layout='NCHW')", " -> y",
        "Cross-correlation as torch.nn.functional.conv2d, no bias.\n"
        "x (N, C, H, W), w (O, C, K, K) -> y (N, O, Ho, Wo), float32.\n"
        "layout='CNHW': x is channel-major (C, N, H, W) and so is y (O, N, Ho, Wo);\n"
        "a 1x1 convolution is then one GEMM over the whole batch."));

WRAP(conv2d_backward, conv_backward, NPY_FLOAT32)
PyDoc_STRVAR(conv2d_backward_doc,
    DOC("conv2d_backward(x, w, grad_y, stride=1, padding=0, *, layout='NCHW', grad_x=True, "
        "grad_w=True)", " -> (grad_x, grad_w)",
        "Gradients of conv2d with respect to x and w, given grad_y = dL/dy.\n"
        "grad_x=False or grad_w=False skips that gradient (None in its place)."));

WRAP(ref_conv2d_f64, conv_forward, NPY_FLOAT64)
PyDoc_STRVAR(ref_conv2d_f64_doc,
    DOC("ref_conv2d_f64(x, w, stride=1, padding=0)", " -> y",
        "Naive float64 reference (tests)."));

WRAP(ref_conv2d_backward_f64, conv_backward, NPY_FLOAT64)
PyDoc_STRVAR(ref_conv2d_backward_f64_doc,
    DOC("ref_conv2d_backward_f64(x, w, grad_y, stride=1, padding=0)", " -> (grad_x, grad_w)",
        "Naive float64 reference (tests)."));

/* conv2d_algo(x_shape, w_shape, stride=1, padding=0, *, layout='NCHW') */
static PyObject *core_conv2d_algo(PyObject *m, PyObject *args, PyObject *kw) {
    static const char *fn = "conv2d_algo";
    static char *kwlist[] = {"x_shape", "w_shape", "stride", "padding", "layout", NULL};
    PyObject *oxs, *ows, *ostride = NULL, *opadding = NULL;
    long long stride = 1, padding = 0;
    layout_arg L = {fn, SAL_NCHW};
    npy_intp xs[4], ws[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO$O&", kwlist, &oxs, &ows, &ostride,
                                     &opadding, layout_converter, &L) ||
        i64_arg(ostride, fn, "stride", &stride) || i64_arg(opadding, fn, "padding", &padding) ||
        check_int_arg(stride, 1, fn, "stride") || check_int_arg(padding, 0, fn, "padding") ||
        parse_shape4(oxs, fn, "x_shape", xs) || parse_shape4(ows, fn, "w_shape", ws))
        return NULL;
    const int nchw = L.layout == SAL_NCHW;
    if (ws[1] != xs[nchw] || ws[2] != ws[3]) {
        PyErr_Format(PyExc_ValueError,
                     "%s: w_shape must be (O, C=%lld, K, K) with a square kernel, got "
                     "(%lld, %lld, %lld, %lld)", fn, (long long)xs[nchw], (long long)ws[0],
                     (long long)ws[1], (long long)ws[2], (long long)ws[3]);
        return NULL;
    }
    sal_conv_desc d = {{xs[!nchw], xs[nchw], xs[2], xs[3], L.layout}, ws[0], ws[2], stride,
                       padding, sal_get_num_threads()};
    if (refused(sal_conv_check(&d, NULL), fn)) return NULL;
    return Py_BuildValue("{s:s,s:s,s:s}", "forward", sal_conv_algo(&d, SAL_CONV_FORWARD),
                         "input_grad", sal_conv_algo(&d, SAL_CONV_INPUT_GRAD), "weight_grad",
                         sal_conv_algo(&d, SAL_CONV_WEIGHT_GRAD));
}
PyDoc_STRVAR(conv2d_algo_doc,
    DOC("conv2d_algo(x_shape, w_shape, stride=1, padding=0, *, layout='NCHW')",
        " -> dict",
        "The algorithm conv2d / conv2d_backward run for these shapes, per pass:\n"
        "{'forward': ..., 'input_grad': ..., 'weight_grad': ...}, each one of 'gemm1x1',\n"
        "'winograd4x4' (3x3, stride 1, padding 1), 'direct3x3' or 'im2col-gemm'.\n"
        "x_shape is (N, C, H, W), or (C, N, H, W) with layout='CNHW'; w_shape (O, C, K, K)."));

static PyObject *core_get_conv_algo(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    return PyUnicode_FromString(sal_conv_get_algo());
}
PyDoc_STRVAR(get_conv_algo_doc,
    DOC("get_conv_algo()", " -> str",
        "The convolution family forced by set_conv_algo or SAL_CONV_ALGO: 'auto' (the rule),\n"
        "'winograd', 'direct' or 'im2col'."));

static PyObject *core_set_conv_algo(PyObject *m, PyObject *arg) {
    if (arg != Py_None && !PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "set_conv_algo: name must be a str or None, got %.80s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const char *name = arg == Py_None ? NULL : PyUnicode_AsUTF8(arg);
    if (arg != Py_None && !name) return NULL;
    if (sal_conv_set_algo(name) != SAL_OK) {
        PyErr_SetString(PyExc_ValueError, sal_last_error());
        return NULL;
    }
    Py_RETURN_NONE;
}
PyDoc_STRVAR(set_conv_algo_doc,
    DOC("set_conv_algo(name)", "",
        "Force a convolution family where it applies: 'winograd', 'direct' or 'im2col'\n"
        "(None or 'auto': the measured rule).  For tests and benchmarks; process-wide."));

WRAP(ref_wino_conv2d_f64, wino_forward, NPY_FLOAT64)
PyDoc_STRVAR(ref_wino_conv2d_f64_doc,
    DOC("ref_wino_conv2d_f64(x, w, stride=1, padding=0, *, layout='NCHW')", " -> y",
        "Naive Winograd F(4x4, 3x3) in float64 (tests); needs stride=1, padding=1, 3x3."));
WRAP(ref_wino_conv2d, wino_forward, NPY_FLOAT32)
PyDoc_STRVAR(ref_wino_conv2d_doc,
    DOC("ref_wino_conv2d(x, w, stride=1, padding=0, *, layout='NCHW')", " -> y",
        "Naive Winograd F(4x4, 3x3) in float32 (tests); needs stride=1, padding=1, 3x3."));
WRAP(ref_wino_conv2d_backward_f64, wino_backward, NPY_FLOAT64)
PyDoc_STRVAR(ref_wino_conv2d_backward_f64_doc,
    DOC("ref_wino_conv2d_backward_f64(x, w, grad_y, stride=1, padding=0, *, layout='NCHW', "
        "grad_x=True, grad_w=True)", " -> (grad_x, grad_w)",
        "Naive Winograd F(4x4, 3x3) gradients in float64 (tests)."));
WRAP(ref_wino_conv2d_backward, wino_backward, NPY_FLOAT32)
PyDoc_STRVAR(ref_wino_conv2d_backward_doc,
    DOC("ref_wino_conv2d_backward(x, w, grad_y, stride=1, padding=0, *, layout='NCHW', "
        "grad_x=True, grad_w=True)", " -> (grad_x, grad_w)",
        "Naive Winograd F(4x4, 3x3) gradients in float32 (tests)."));

PyMethodDef core_conv_methods[] = {
    KW_METHOD("conv2d_algo", core_conv2d_algo, conv2d_algo_doc),
    {"get_conv_algo", core_get_conv_algo, METH_NOARGS, get_conv_algo_doc},
    {"set_conv_algo", core_set_conv_algo, METH_O, set_conv_algo_doc},
    KW_METHOD("ref_wino_conv2d_f64", core_ref_wino_conv2d_f64, ref_wino_conv2d_f64_doc),
    KW_METHOD("ref_wino_conv2d", core_ref_wino_conv2d, ref_wino_conv2d_doc),
    KW_METHOD("ref_wino_conv2d_backward_f64", core_ref_wino_conv2d_backward_f64,
              ref_wino_conv2d_backward_f64_doc),
    KW_METHOD("ref_wino_conv2d_backward", core_ref_wino_conv2d_backward,
              ref_wino_conv2d_backward_doc),
    KW_METHOD("conv2d", core_conv2d, conv2d_doc),
    KW_METHOD("conv2d_backward", core_conv2d_backward, conv2d_backward_doc),
    KW_METHOD("ref_conv2d_f64", core_ref_conv2d_f64, ref_conv2d_f64_doc),
    KW_METHOD("ref_conv2d_backward_f64", core_ref_conv2d_backward_f64,
              ref_conv2d_backward_f64_doc),
    {NULL, NULL, 0, NULL}};
