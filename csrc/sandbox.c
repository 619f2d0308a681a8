/* placeholder: replaced by the confined runner */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_sandbox", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__sandbox(void) { return PyModule_Create(&mod); }
