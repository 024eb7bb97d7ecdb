/* salnp._core: declarations shared by the binding's files (never installed).
 *
 * The binding is split by the libsal header each file wraps:
 *   args.c    argument converters and checks, status -> exception (this header)
 *   lib.c     sal/core.h: BLIS information, threads
 *   conv.c    sal/conv.h
 *   layers.c  sal/layers.h: batch norm, ReLU, add, pooling, Linear, cross-entropy, SGD
 *   shift.c   sal/shift.h: SL shift, ASL active shift, SAL
 *   shiftconv.c  sal/shiftconv.h: shift + 1x1 convolution in one kernel
 *   data.c    sal/data.h: dataset parsers and batches
 *   net.c     sal/net.h, sal/count.h: network programs (training and exported) and their count
 *   module.c  the module: state, exception class, method tables, init
 *
 * Every function converts its array arguments to float32 (float64 for the reference
 * twins), C-contiguous and aligned (a copy where needed: inputs are never written), checks
 * shapes with messages that name the function and the argument, allocates outputs and
 * scratch with the GIL held, and releases the GIL only around the pure C work. */
#ifndef SALNP_BINDING_H
#define SALNP_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef SALNP_CORE_DEFINES_API
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL salnp_core_ARRAY_API
#include <numpy/arrayobject.h>

#include "sal/sal.h"

/* ---- module state ---------------------------------------------------------------- */

typedef struct {
    PyObject *error; /* salnp.SalError: failures that are not the caller's fault */
} core_state;

core_state *core_get_state(PyObject *module);

/* ---- method tables, one per file (module.c adds them all) ---------------------- */

extern PyMethodDef core_lib_methods[], core_conv_methods[], core_layers_methods[],
    core_shift_methods[], core_data_methods[], core_net_methods[], core_shiftconv_methods[];

/* a METH_VARARGS | METH_KEYWORDS entry */
#define KW_METHOD(name, func, doc) \
    {name, (PyCFunction)(void (*)(void))(func), METH_VARARGS | METH_KEYWORDS, doc}

/* A docstring with a text signature: DOC("f(x, y=1)", " -> z", "What f does.") gives
 * __text_signature__ "(x, y=1)" and __doc__ "f(x, y=1) -> z\n\nWhat f does." */
#define DOC(sig, ret, text) sig "\n--\n\n" sig ret "\n\n" text

/* static PyObject *core_NAME(m, args, kw) = IMPL(m, args, kw, VARIANT, "NAME"): one of
 * the entry points that share an implementation (float32 and float64 twins, forward and
 * backward of one layer), named in its messages by its Python name */
#define WRAP(name, impl, variant)                                            \
    static PyObject *core_##name(PyObject *m, PyObject *args, PyObject *kw) { \
        return impl(m, args, kw, variant, #name);                            \
    }

/* ---- running a kernel ------------------------------------------------------------ */

/* status = call, with the GIL released around it */
#define CALL_NOGIL(status, call)                          \
    do {                                                  \
        PyThreadState *salnp_ts_ = PyEval_SaveThread();   \
        (status) = (call);                                \
        PyEval_RestoreThread(salnp_ts_);                  \
    } while (0)

/* The float32/float64 dispatch: the fast float32 kernel, or for NPY_FLOAT64 its naive
 * float64 reference twin, with the GIL released. */
#define CALL_TYPED(status, typenum, f32_call, f64_call) \
    CALL_NOGIL(status, (typenum) == NPY_FLOAT64 ? (f64_call) : (f32_call))

/* Turn a libsal status into the matching Python exception; returns NULL. */
PyObject *raise_status(PyObject *module, sal_status s, const char *fn);
/* 0 when s is SAL_OK, else -1 with the exception raised */
int failed(PyObject *module, sal_status s, const char *fn);
/* *y when s is SAL_OK (the reference is stolen: *y becomes NULL), else NULL with the
 * status raised: the last step of a function that returns one new array */
PyObject *take_result(PyObject *module, sal_status s, const char *fn, PyArrayObject **y);
/* ValueError "fn: <libsal's message>" for a descriptor a *_check function refused */
int refused(sal_status s, const char *fn);

/* ---- arrays ---------------------------------------------------------------------- */

/* "(4, 3, 8)" */
void shape_str(char *buf, size_t n, PyArrayObject *a);

/* New reference to obj as a typenum (NPY_FLOAT32 or NPY_FLOAT64) array with ndim
 * dimensions (-1: any), C-contiguous, aligned, native byte order, every dimension >= 1;
 * a copy where needed.  Integer, bool, complex, object and string data are refused. */
PyArrayObject *as_real(PyObject *obj, int typenum, const char *fn, const char *arg, int ndim,
                       const char *dims_doc);
PyArrayObject *as_f32(PyObject *obj, const char *fn, const char *arg, int ndim,
                      const char *dims_doc);

/* New reference to obj when a kernel writes it in place: an ndarray of typenum,
 * C-contiguous, aligned, native byte order and writeable, with ndim dimensions (-1: any).
 * Never converted: an update written into a silent copy would be lost. */
PyArrayObject *as_inplace(PyObject *obj, int typenum, const char *fn, const char *arg, int ndim,
                          const char *dims_doc);
/* the same, raising exc (instead of ValueError) for a wrong dtype, layout or a read-only array */
PyArrayObject *as_inplace_ex(PyObject *obj, int typenum, const char *fn, const char *arg,
                             int ndim, const char *dims_doc, PyObject *exc);

/* ValueError "fn: arg must have shape EXPECTED, got (..)" when a's shape != want (-1: any) */
int require_shape(PyArrayObject *a, int nd, const npy_intp *want, const char *fn,
                  const char *arg, const char *expected);
/* b must have a's shape */
int same_shape(PyArrayObject *a, PyArrayObject *b, const char *fn, const char *aname,
               const char *bname);
/* *out = obj as a (C,) vector; None allowed when may_be_none (then *out = NULL, no error) */
int channel_vec(PyArrayObject **out, PyObject *obj, int typenum, int may_be_none, npy_intp C,
                const char *fn, const char *arg);

/* zero-filled (gradients accumulate into it) or uninitialised (forward outputs) */
PyArrayObject *new_array(int nd, const npy_intp *dims, int typenum);
PyArrayObject *new_empty(int nd, const npy_intp *dims, int typenum);
float *scratch_alloc(size_t nfloats);
static inline void *data_or_null(PyArrayObject *a) { return a ? PyArray_DATA(a) : NULL; }

/* ---- scalars and shapes ---------------------------------------------------------- */

int check_int_arg(long long v, long long lo, const char *fn, const char *arg);
/* obj NULL keeps *out (an omitted optional argument) */
int i64_arg(PyObject *obj, const char *fn, const char *arg, long long *out);
int u64_arg(PyObject *obj, const char *fn, const char *arg, uint64_t *out);
int f64_arg(PyObject *obj, const char *fn, const char *arg, double *out);
/* ValueError unless beta is finite and >= 0 */
int check_beta(double beta, const char *fn);
/* (N, C, H, W) from a sequence of four ints >= 1 whose float64 array is addressable */
int parse_shape4(PyObject *obj, const char *fn, const char *arg, npy_intp out[4]);

/* O& converter for layout="NCHW" or "CNHW"; set .fn (for the message) before parsing */
typedef struct {
    const char *fn;
    sal_layout layout;
} layout_arg;
int layout_converter(PyObject *obj, void *out);

/* activation geometry: an NCHW array, an array seen as (1, numel, 1, 1), and the array
 * dims of an activation ((N, C, H, W) or, channel-major, (C, N, H, W)) */
sal_act act_nchw(PyArrayObject *x);
sal_act act_flat(PyArrayObject *x);
void act_dims(sal_act a, npy_intp dims[4]);
/* grad_y must have the shape of y; what names the shape, e.g. "(N, C, Ho, Wo)" */
int require_grad_y(PyArrayObject *gy, sal_act y, const char *fn, const char *what);

#endif
