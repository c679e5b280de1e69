// Everything a stage-cost threshold T allows, as bitsets: which stages a class may run and
// across which cut positions one class may hand over to another.
#pragma once

#include <cstdint>
#include <vector>

#include "class_instance.hpp"

namespace pipeedge_sched {

struct ThresholdTables {
  double threshold = 0;
  std::vector<bits::Word> stage;      // [(v * L + i) * W]: ends j with (i, j] on v allowed
  std::vector<bits::Word> handover;   // [(u * K + v) * W]: cuts i in 1..L-1 with u -> v allowed
  std::vector<std::uint8_t> pair_ok;  // [u * K + v]: any handover bit set
  std::vector<std::uint8_t> start_ok; // [v]: client -> v input leg within T
  std::vector<std::uint8_t> end_ok;   // [u]: u -> client output leg within T
  // Per class, the most one allowed stage can hold, measured in layers, work and weight MB
  // (with slack for rounding: bounds built on these must never drop a feasible state).
  std::vector<std::size_t> max_span;
  std::vector<double> max_work;
  std::vector<double> max_weight;

  const bits::Word* stages_from(const ClassInstance& in, std::size_t v, std::size_t i) const {
    return &stage[(v * in.layers + i) * in.words];
  }
  const bits::Word* cuts(const ClassInstance& in, std::size_t u, std::size_t v) const {
    return &handover[(u * in.classes + v) * in.words];
  }
};

// T may be +inf (no bottleneck limit: memory and finite links only).
ThresholdTables make_tables(const ClassInstance& in, double threshold);

}  // namespace pipeedge_sched
