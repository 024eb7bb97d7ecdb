/* salnp._core: the module (multi-phase init, module state, salnp.SalError) and the
 * union of the method tables of the binding's files. */
#define SALNP_CORE_DEFINES_API
#include "binding.h"

#ifndef SAL_VERSION_STR
#define SAL_VERSION_STR SAL_VERSION
#endif

core_state *core_get_state(PyObject *module) { return (core_state *)PyModule_GetState(module); }

static int core_exec(PyObject *m) {
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    core_state *st = core_get_state(m);
    st->error = PyErr_NewExceptionWithDoc(
        "salnp.SalError", "A libsal failure that is not an argument error (BLIS, I/O, format).",
        PyExc_RuntimeError, NULL);
    if (!st->error) return -1;
    if (PyModule_AddObjectRef(m, "SalError", st->error) < 0) return -1;
    if (PyModule_AddStringConstant(m, "__version__", SAL_VERSION_STR) < 0) return -1;
    PyMethodDef *tables[] = {core_lib_methods,    core_conv_methods, core_layers_methods,
                             core_shift_methods,  core_data_methods, core_net_methods};
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
