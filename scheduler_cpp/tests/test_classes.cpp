// Device classes: identical devices group, links split them, merging is pessimistic.
#include "check.hpp"
#include "class_instance.hpp"
#include "instances.hpp"

using namespace pipeedge_sched;

TEST_CASE(identical_devices_form_one_class) {
  Problem p = testing::uniform_problem(3, 4, 1, 100, 1);
  p.devices[3].time_s[0] = 2;
  const CostModel m(p);
  const auto classes = exact_classes(m);
  CHECK(classes.size() == 2);
  CHECK(classes[0].size() == 3);
  CHECK(count_states({3, 1}) == 8);
}

TEST_CASE(asymmetric_links_split_a_class) {
  Problem p = testing::uniform_problem(3, 3, 1, 100, 1);
  p.links.host_to_host.assign(9, Link{1, 0});
  p.links.host_to_host[0 * 3 + 2] = Link{2, 0};  // h0 -> h2 faster than h1 -> h2
  const CostModel m(p);
  const auto classes = exact_classes(m);
  CHECK(classes.size() == 3);
}

TEST_CASE(symmetric_pair_link_keeps_a_class) {
  Problem p = testing::uniform_problem(3, 3, 1, 100, 1);
  p.links.host_to_host.assign(9, Link{1, 0});
  p.links.host_to_host[0 * 3 + 1] = Link{4, 1};  // h0 <-> h1 alike in both directions
  p.links.host_to_host[1 * 3 + 0] = Link{4, 1};
  const CostModel m(p);
  const auto classes = exact_classes(m);
  CHECK(classes.size() == 2);  // {h0, h1} and {h2}
  const ClassInstance in = build_instance(m, classes);
  CHECK(in.link[0].bw_Mbps == 4);  // within {h0, h1}
  CHECK(in.link[1].bw_Mbps == 1);  // {h0, h1} -> h2
}

TEST_CASE(merging_takes_worst_values) {
  Problem p = testing::uniform_problem(2, 3, 1, 100, 4);
  p.devices[1].time_s = {2, 1};
  p.devices[1].mem_MB = 50;
  p.devices[2].time_s = {9, 9};
  const CostModel m(p);
  const auto merged = merge_classes(m, exact_classes(m), 2 * 3);  // (2+1)*(1+1)*2 classes = 12 > 6
  CHECK(merged.size() == 1);  // 2 classes of {2, 1} would still be 12 states
  const ClassInstance in = build_instance(m, merged);
  CHECK(in.compute_s(0, 0, 2) >= 3);
}
