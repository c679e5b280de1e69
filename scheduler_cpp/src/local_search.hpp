// Post-pass for heuristic schedules, on the real devices: optimal cuts for the schedule's
// device order, then swapping a stage's device for an unused one while the objective improves.
#pragma once

#include <vector>

#include "pipeedge_sched/cost_model.hpp"

namespace pipeedge_sched {

// Best cuts for devices in this order, every device one stage: min-max bottleneck (throughput)
// or min-sum latency. Empty when no cut fits.
std::vector<StagePlan> best_cuts(const CostModel& m, const std::vector<std::size_t>& order);

// Never returns a worse plan than `plan` (which must be valid).
std::vector<StagePlan> improve_plan(const CostModel& model, std::vector<StagePlan> plan, int rounds = 3);

}  // namespace pipeedge_sched
