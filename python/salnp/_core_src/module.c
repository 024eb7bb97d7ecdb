/* salnp._core: the module (multi-phase init, module state, salnp.SalError) and the
 * union of the method tables of the binding's files. */
#define SALNP_CORE_DEFINES_API
#include "binding.h"

#ifndef SAL_VERSION_STR
#define SAL_VERSION_STR SAL_VERSION
#endif

core_state *core_get_state(PyObject *module) { return (core_state *)PyModule_GetState(module); }

/* m.name = a tuple of the n strings */
static int add_names(PyObject *m, const char *name, const char *const *v, int64_t n) {
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (!t) return -1;
    for (int64_t i = 0; i < n; i++) {
        PyObject *u = PyUnicode_FromString(v[i]);
        if (!u) { Py_DECREF(t); return -1; }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, u);
    }
    int r = PyModule_AddObjectRef(m, name, t);
    Py_DECREF(t);
    return r;
}

/* The program table's self-description (sal/net.h) and the constants the Python side must
 * agree with: NET_FIELDS, NET_KINDS, BN_EPS, BN_MOMENTUM, TAP_THRESHOLD_DEFAULT
 * (sal/attention.h). */
static int add_program_tables(PyObject *m) {
    int64_t n;
    const char *const *v;
    if ((v = sal_net_op_fields(&n), add_names(m, "NET_FIELDS", v, n)) < 0 ||
        (v = sal_net_op_kinds(&n), add_names(m, "NET_KINDS", v, n)) < 0)
        return -1;
    PyObject *eps = PyFloat_FromDouble(SAL_BN_EPS), *mom = PyFloat_FromDouble(SAL_BN_MOMENTUM);
    PyObject *thr = PyFloat_FromDouble(SAL_TAP_THRESHOLD_DEFAULT);
    int r = eps && mom && thr && PyModule_AddObjectRef(m, "BN_EPS", eps) == 0 &&
                    PyModule_AddObjectRef(m, "BN_MOMENTUM", mom) == 0 &&
                    PyModule_AddObjectRef(m, "TAP_THRESHOLD_DEFAULT", thr) == 0
                ? 0
                : -1;
    Py_XDECREF(eps);
    Py_XDECREF(mom);
    Py_XDECREF(thr);
    return r;
}

static int core_exec(PyObject *m) {
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    core_state *st = core_get_state(m);
    st->error = PyErr_NewExceptionWithDoc(
        "salnp.SalError", "A libsal failure that is not an argument error (BLIS, I/O, format).",
        PyExc_RuntimeError, NULL);
    if (!st->error) return -1;
    if (PyModule_AddObjectRef(m, "SalError", st->error) < 0) return -1;
    if (PyModule_AddStringConstant(m, "__version__", SAL_VERSION_STR) < 0) return -1;
    if (add_program_tables(m) < 0) return -1;
    PyMethodDef *tables[] = {core_lib_methods,   core_conv_methods, core_layers_methods,
                             core_shift_methods, core_data_methods, core_net_methods,
                             core_shiftconv_methods};
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++)
        if (PyModule_AddFunctions(m, tables[i]) < 0) return -1;
    sal_status s = sal_init();
    if (s != SAL_OK) {
        PyErr_Format(st->error, "libsal initialisation failed: %s", sal_last_error());
        return -1;
    }
    return 0;
}

static int core_traverse(PyObject *m, visitproc visit, void *arg) {
    Py_VISIT(core_get_state(m)->error);
    return 0;
}

static int core_clear(PyObject *m) {
    Py_CLEAR(core_get_state(m)->error);
    return 0;
}

static PyModuleDef_Slot core_slots[] = {{Py_mod_exec, core_exec}, {0, NULL}};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", "libsal kernels on NumPy arrays (see salnp.ops).",
    sizeof(core_state), NULL, core_slots, core_traverse, core_clear, NULL};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
