// Input validation: one message per problem, naming the offending field.
#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include "pipeedge_sched/problem.hpp"

namespace pipeedge_sched {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(what); }

bool bad_number(double x) { return !(x >= 0) || std::isinf(x); }  // negative, NaN or inf

void check_links(const std::vector<Link>& legs, std::size_t expected, const char* name) {
  if (!legs.empty() && legs.size() != expected) {
    fail(std::string("links.") + name + " has " + std::to_string(legs.size()) +
         " entries, expected " + std::to_string(expected));
  }
  for (const Link& leg : legs) {
    if (std::isnan(leg.bw_Mbps) || bad_number(leg.latency_ms)) {
      fail(std::string("links.") + name + " has a NaN bandwidth or a negative latency");
    }
  }
}

}  // namespace

void validate(const Problem& p) {
  const std::size_t layers = p.model.mem_MB.size();
  if (layers == 0) fail("model has no layers");
  if (p.model.out_elems.size() != layers) {
    fail("model out_elems has " + std::to_string(p.model.out_elems.size()) + " entries, mem_MB has " +
         std::to_string(layers));
  }
  for (double mb : p.model.mem_MB) {
    if (bad_number(mb)) fail("model mem_MB has a negative or non-finite entry");
  }
  if (p.batch_size == 0) fail("batch_size must be at least 1");
  if (p.dtype_bytes == 0) fail("dtype_bytes must be at least 1");
  std::unordered_set<std::string> names;
  for (const Device& d : p.devices) {
    if (!names.insert(d.name).second) fail("device " + d.name + " is listed twice");
    if (d.time_s.size() != layers) {
      fail("device " + d.name + " has " + std::to_string(d.time_s.size()) + " layer times, model has " +
           std::to_string(layers) + " layers");
    }
    for (double t : d.time_s) {
      if (bad_number(t)) fail("device " + d.name + " has a negative or non-finite layer time");
    }
    if (std::isnan(d.mem_MB) || std::isnan(d.bw_Mbps)) fail("device " + d.name + " has a NaN field");
    if (bad_number(d.frame_s) || bad_number(d.wire_s_per_MB)) {
      fail("device " + d.name + " has a negative or non-finite frame_s or wire_s_per_MB");
    }
  }
  const std::size_t n = p.devices.size();
  check_links(p.links.host_to_host, n * n, "host_to_host");
  check_links(p.links.client_to_host, n, "client_to_host");
  check_links(p.links.host_to_client, n, "host_to_client");
}

}  // namespace pipeedge_sched
