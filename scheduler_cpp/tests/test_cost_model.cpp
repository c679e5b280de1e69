// The seed's cost model: compute sums, transfer units, memory buffers, link defaults.
#include <limits>

#include "check.hpp"
#include "instances.hpp"

using namespace pipeedge_sched;

TEST_CASE(transfer_uses_binary_megabits) {
  CHECK_NEAR(transfer_seconds(1024.0 * 1024.0 / 8.0, 1.0), 1.0, 1e-15);
  CHECK(transfer_seconds(1.0, 0.0) == std::numeric_limits<double>::infinity());
  CHECK(transfer_seconds(0.0, 0.0) == 0.0);
}

TEST_CASE(compute_and_memory_follow_the_seed) {
  Problem p = testing::uniform_problem(4, 2, 0.5, 100, 8);
  p.batch_size = 2;
  p.dtype_bytes = 4;
  p.buffers_in = 2;
  p.buffers_out = 3;
  p.model.out_elems = {10, 20, 30, 40};
  p.model.in_elems = 5;
  const CostModel m(p);
  CHECK_NEAR(m.compute_s(0, 1, 3), 1.0, 1e-15);
  CHECK_NEAR(m.bytes_in(0), 5 * 2 * 4, 0);
  CHECK_NEAR(m.bytes_out(2), 20 * 2 * 4, 0);
  // First stage: no receive queue; send queue x3; one in and one out processing buffer.
  const double first = 2.0 + (3 * 160.0 + 40.0 + 160.0) / (1024 * 1024);
  CHECK_NEAR(m.memory_MB(0, 2), first, 1e-15);
  // Later stage adds the receive queue x2 of the incoming activation.
  const double later = 2.0 + (2 * 160.0 + 3 * 320.0 + 160.0 + 320.0) / (1024 * 1024);
  CHECK_NEAR(m.memory_MB(2, 4), later, 1e-15);
}

TEST_CASE(links_default_to_the_slower_nic) {
  Problem p = testing::uniform_problem(2, 2, 1, 100, 8);
  p.devices[1].bw_Mbps = 2;
  const CostModel m(p);
  CHECK(m.link(0, 1).bw_Mbps == 2);
  CHECK(m.link(1, 0).latency_ms == 0);
  CHECK_NEAR(m.transfer_s(0, 1, 1), 0.5, 0);
  CHECK(!m.models_input() && !m.models_output());
}

TEST_CASE(evaluate_sums_latency_and_takes_max_for_bottleneck) {
  Problem p = testing::uniform_problem(4, 2, 1, 100, 1);
  p.links.host_to_host = {Link{1, 0}, Link{2, 10}, Link{2, 10}, Link{1, 0}};
  p.links.host_to_client = {Link{4, 1}, Link{4, 1}};
  const CostModel m(p);
  const Schedule s = m.evaluate({{0, 0, 1}, {1, 1, 4}});
  CHECK(s.stages.size() == 2);
  CHECK_NEAR(s.stages[0].compute_s, 1, 0);
  CHECK_NEAR(s.stages[0].transfer_s, 0.5, 0);
  CHECK_NEAR(s.stages[1].compute_s, 3, 0);
  CHECK_NEAR(s.stages[1].transfer_s, 0.25, 0);
  CHECK_NEAR(s.bottleneck_s, 3, 0);
  CHECK_NEAR(s.latency_s, 1 + 0.5 + 0.010 + 3 + 0.25 + 0.001, 1e-12);
  CHECK(s.stages[0].first_layer == 1 && s.stages[1].last_layer == 4);
}

TEST_CASE(validation_names_the_problem) {
  Problem p = testing::uniform_problem(3, 1, 1, 100, 1);
  p.devices[0].time_s.pop_back();
  CHECK_THROWS(CostModel{p});
  Problem q = testing::uniform_problem(3, 1, 1, 100, 1);
  q.model.out_elems.pop_back();
  CHECK_THROWS(validate(q));
  Problem r = testing::uniform_problem(3, 2, 1, 100, 1);
  r.devices[1].name = r.devices[0].name;
  CHECK_THROWS(validate(r));
  Problem e = testing::uniform_problem(3, 1, 1, 100, 1);
  e.model.mem_MB.clear();
  e.model.out_elems.clear();
  CHECK_THROWS(validate(e));
}
