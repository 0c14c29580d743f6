// The Python module `affjax.models._cpu_kernels`: `handlers()` returns affjax's XLA FFI handlers for the CPU as
// capsules, by name, for `jax.ffi.register_ffi_target` (affjax/models/cpu_kernels.py).

#include <Python.h>

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* AffjaxDepthwiseForward(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* AffjaxDepthwiseInputGrad(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* AffjaxDepthwiseKernelGrad(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* AffjaxChannelSums(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* AffjaxPreluGrad(XLA_FFI_CallFrame* call_frame);
}

namespace {

PyObject* Capsule(XLA_FFI_Error* (*handler)(XLA_FFI_CallFrame*)) {
  return PyCapsule_New(reinterpret_cast<void*>(handler), nullptr, nullptr);
}

PyObject* Handlers(PyObject*, PyObject*) {
  return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N}", "depthwise_forward", Capsule(AffjaxDepthwiseForward),
                       "depthwise_input_grad", Capsule(AffjaxDepthwiseInputGrad),
                       "depthwise_kernel_grad", Capsule(AffjaxDepthwiseKernelGrad),
                       "channel_sums", Capsule(AffjaxChannelSums), "prelu_grad", Capsule(AffjaxPreluGrad));
}

PyMethodDef kMethods[] = {{"handlers", Handlers, METH_NOARGS, "affjax's XLA FFI handlers for the CPU, by name."},
                          {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu_kernels", nullptr, -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__cpu_kernels(void) { return PyModule_Create(&kModule); }
