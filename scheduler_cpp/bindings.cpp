#include <pybind11/pybind11.h>
int pipeedge_sched_placeholder();
PYBIND11_MODULE(_native, m) { m.def("placeholder", &pipeedge_sched_placeholder); }
