// The only file that knows about Python: binds the core's plain structs and solve().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "pipeedge_sched/cost_model.hpp"
#include "pipeedge_sched/solver.hpp"

namespace py = pybind11;
using namespace pipeedge_sched;

PYBIND11_MODULE(_native, m) {
  m.doc() = "PipeEdge partition scheduler core (private; use pipeedge.coordinator.scheduler)";

  py::enum_<Objective>(m, "Objective")
      .value("THROUGHPUT", Objective::Throughput)
      .value("LATENCY", Objective::Latency);

  py::class_<Model>(m, "Model")
      .def(py::init<>())
      .def_readwrite("mem_MB", &Model::mem_MB)
      .def_readwrite("out_elems", &Model::out_elems)
      .def_readwrite("in_elems", &Model::in_elems);

  py::class_<Device>(m, "Device")
      .def(py::init<>())
      .def_readwrite("name", &Device::name)
      .def_readwrite("type", &Device::type)
      .def_readwrite("mem_MB", &Device::mem_MB)
      .def_readwrite("bw_Mbps", &Device::bw_Mbps)
      .def_readwrite("time_s", &Device::time_s)
      .def_readwrite("frame_s", &Device::frame_s)
      .def_readwrite("wire_s_per_MB", &Device::wire_s_per_MB);

  py::class_<Link>(m, "Link")
      .def(py::init([](double bw_Mbps, double latency_ms) { return Link{bw_Mbps, latency_ms}; }),
           py::arg("bw_Mbps"), py::arg("latency_ms") = 0.0)
      .def_readwrite("bw_Mbps", &Link::bw_Mbps)
      .def_readwrite("latency_ms", &Link::latency_ms);

  py::class_<Links>(m, "Links")
      .def(py::init<>())
      .def_readwrite("host_to_host", &Links::host_to_host)
      .def_readwrite("client_to_host", &Links::client_to_host)
      .def_readwrite("host_to_client", &Links::host_to_client);

  py::class_<Problem>(m, "Problem")
      .def(py::init<>())
      .def_readwrite("model", &Problem::model)
      .def_readwrite("devices", &Problem::devices)
      .def_readwrite("links", &Problem::links)
      .def_readwrite("batch_size", &Problem::batch_size)
      .def_readwrite("dtype_bytes", &Problem::dtype_bytes)
      .def_readwrite("buffers_in", &Problem::buffers_in)
      .def_readwrite("buffers_out", &Problem::buffers_out)
      .def_readwrite("objective", &Problem::objective);

  py::class_<Options>(m, "Options")
      .def(py::init<>())
      .def_readwrite("max_search_states", &Options::max_search_states)
      .def_readwrite("max_refine_states", &Options::max_refine_states)
      .def_readwrite("time_limit_s", &Options::time_limit_s)
      .def_readwrite("threads", &Options::threads);

  py::class_<Stage>(m, "Stage")
      .def_readonly("device", &Stage::device)
      .def_readonly("first_layer", &Stage::first_layer)
      .def_readonly("last_layer", &Stage::last_layer)
      .def_readonly("compute_s", &Stage::compute_s)
      .def_readonly("wire_s", &Stage::wire_s)
      .def_readonly("transfer_s", &Stage::transfer_s)
      .def_readonly("link_latency_s", &Stage::link_latency_s)
      .def_readonly("memory_MB", &Stage::memory_MB);

  py::class_<SearchStats>(m, "SearchStats")
      .def_readonly("device_classes", &SearchStats::device_classes)
      .def_readonly("count_states", &SearchStats::count_states)
      .def_readonly("feasibility_checks", &SearchStats::feasibility_checks)
      .def_readonly("refine_states", &SearchStats::refine_states);

  py::class_<Schedule>(m, "Schedule")
      .def_readonly("feasible", &Schedule::feasible)
      .def_readonly("stages", &Schedule::stages)
      .def_readonly("input_transfer_s", &Schedule::input_transfer_s)
      .def_readonly("input_latency_s", &Schedule::input_latency_s)
      .def_readonly("bottleneck_s", &Schedule::bottleneck_s)
      .def_readonly("latency_s", &Schedule::latency_s)
      .def_readonly("exact", &Schedule::exact)
      .def_readonly("lower_bound", &Schedule::lower_bound)
      .def_readonly("gap", &Schedule::gap)
      .def_readonly("method", &Schedule::method)
      .def_readonly("stats", &Schedule::stats);

  // The GIL is released: a large search takes a while and touches no Python object.
  m.def("solve", &solve, py::arg("problem"), py::arg("options") = Options{},
        py::call_guard<py::gil_scoped_release>(),
        "Optimal schedule for the problem; raises ValueError on malformed input.");

  py::class_<StagePlan>(m, "StagePlan")
      .def(py::init([](std::size_t device, std::size_t begin, std::size_t end) { return StagePlan{device, begin, end}; }),
           py::arg("device"), py::arg("begin"), py::arg("end"));
  m.def(
      "evaluate",
      [](const Problem& problem, const std::vector<StagePlan>& plan) { return CostModel(problem).evaluate(plan); },
      py::arg("problem"), py::arg("plan"), "Costs a given plan with the same model (for checks and comparisons).");
}
