/* salnp._core: the library's state (sal/core.h): BLIS information and threads. */
#include "binding.h"

static PyObject *core_blas_info(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    sal_blas_info bi;
    sal_status s = sal_blas_query(&bi);
    if (s != SAL_OK) return raise_status(m, s, "blas_info");
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:s,s:O,s:O,s:i,s:s}", "blis_version", bi.blis_version,
                         "flavour", bi.flavour, "arch", bi.arch, "arch_source", bi.arch_source,
                         "cpu_features", bi.cpu_features, "verified",
                         bi.verified ? Py_True : Py_False, "generic",
                         bi.generic ? Py_True : Py_False, "threads", sal_get_num_threads(),
                         "isa", sal_get_isa());
}
PyDoc_STRVAR(blas_info_doc,
    DOC("blas_info()", " -> dict",
        "BLIS version, flavour, sub-configuration and how it was chosen."));

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
PyDoc_STRVAR(set_num_threads_doc,
    DOC("set_num_threads(n)", "",
        "Threads used by libsal's loops and by BLIS (n >= 1)."));

static PyObject *core_get_num_threads(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(sal_get_num_threads());
}
PyDoc_STRVAR(get_num_threads_doc,
    DOC("get_num_threads()", " -> int",
        "Threads used by libsal."));

static PyObject *core_get_isa(PyObject *m, PyObject *Py_UNUSED(ignored)) {
    return PyUnicode_FromString(sal_get_isa());
}
PyDoc_STRVAR(get_isa_doc,
    DOC("get_isa()", " -> str",
        "Instruction set of libsal's kernels: 'base', 'avx2' or 'avx512'."));

static PyObject *core_set_isa(PyObject *m, PyObject *arg) {
    if (arg != Py_None && !PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "set_isa: name must be a str or None, got %.80s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const char *name = arg == Py_None ? NULL : PyUnicode_AsUTF8(arg);
    if (arg != Py_None && !name) return NULL;
    sal_status s = sal_set_isa(name);
    if (s != SAL_OK) {
        PyErr_SetString(PyExc_ValueError, sal_last_error());
        return NULL;
    }
    Py_RETURN_NONE;
}
PyDoc_STRVAR(set_isa_doc,
    DOC("set_isa(name)", "",
        "Cap libsal's kernels at 'base', 'avx2' or 'avx512' (None or 'auto': the CPU's best); "
        "for tests and benchmarks."));

static PyObject *core_conv_cache(PyObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"limit", "clear", NULL};
    PyObject *olimit = Py_None;
    int clear = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O$p:conv_cache", kwlist, &olimit, &clear))
        return NULL;
    if (olimit != Py_None) {
        long long bytes = 0;
        if (i64_arg(olimit, "conv_cache", "limit", &bytes)) return NULL;
        sal_status s = sal_conv_cache_limit(bytes);
        if (s != SAL_OK) {
            PyErr_SetString(PyExc_ValueError, sal_last_error());
            return NULL;
        }
    }
    if (clear) sal_conv_cache_clear();
    sal_conv_cache_info ci;
    sal_conv_cache_stats(&ci);
    return Py_BuildValue("{s:L,s:L,s:L}", "limit", (long long)ci.limit, "bytes",
                         (long long)ci.bytes, "entries", (long long)ci.entries);
}
PyDoc_STRVAR(conv_cache_doc,
    DOC("conv_cache(limit=None, *, clear=False)", " -> dict",
        "The convolutions' weights cache (sal/conv.h: evaluation forwards keep Winograd's\n"
        "transformed and the stride-2 kernels' reordered weights, checked against a digest of\n"
        "the weights on every call): limit sets the most bytes it may hold (0: off; default\n"
        "64 MiB or SAL_CONV_CACHE_MB), clear=True empties it.  Returns its limit, bytes and\n"
        "entries after that."));

PyMethodDef core_lib_methods[] = {
    {"conv_cache", (PyCFunction)(void (*)(void))core_conv_cache, METH_VARARGS | METH_KEYWORDS,
     conv_cache_doc},
    {"get_isa", core_get_isa, METH_NOARGS, get_isa_doc},
    {"set_isa", core_set_isa, METH_O, set_isa_doc},
    {"blas_info", core_blas_info, METH_NOARGS, blas_info_doc},
    {"set_num_threads", core_set_num_threads, METH_O, set_num_threads_doc},
    {"get_num_threads", core_get_num_threads, METH_NOARGS, get_num_threads_doc},
    {NULL, NULL, 0, NULL}};
