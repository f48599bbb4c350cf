// The Python module slowfast_kernels._C (setup.py only; the CMake library has no Python). Importing it
// runs the static TORCH_LIBRARY registrations of the other translation units; the module is empty.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
