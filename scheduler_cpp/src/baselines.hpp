// The simple plans every answer must match or beat: the even split, the memory-proportional
// split and a greedy compute-proportional split, each over every device in input order.
#pragma once

#include <vector>

#include "pipeedge_sched/cost_model.hpp"

namespace pipeedge_sched {

// Those of the three plans that fit in memory (and have finite links), in that order.
std::vector<std::vector<StagePlan>> baseline_plans(const CostModel& model);

}  // namespace pipeedge_sched
