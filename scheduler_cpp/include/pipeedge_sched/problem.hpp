// Scheduling inputs as plain structs: what the seed's three YAML files (plus an optional links
// file) say, already parsed. The core never reads files; callers fill these in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pipeedge_sched {

// What "best" means. Throughput: minimise the pipeline bottleneck (ties: lower end-to-end
// latency, then fewer devices). Latency: minimise end-to-end latency (ties: lower bottleneck,
// then fewer devices).
enum class Objective { Throughput, Latency };

// The model, one entry per (sub-)layer, 1-based in the seed's files and 0-based here.
struct Model {
  std::vector<double> mem_MB;             // weight memory of each layer, MB (2^20 bytes)
  std::vector<std::uint64_t> out_elems;   // output elements of each layer, per batch item
  std::uint64_t in_elems = 0;             // input elements of the first layer, per batch item
};

// One host. Devices of the same type in the seed's files get identical profiles.
struct Device {
  std::string name;                       // host name, as in devices.yml
  std::string type;                       // device type name (informational)
  double mem_MB = 0;                      // memory capacity, MB
  double bw_Mbps = 0;                     // NIC bandwidth, Mbit/s (2^20 bits), used without links
  std::vector<double> time_s;             // per-layer compute time at the batch size, seconds
  // What a stage spends on its frames, on this device (its CPU, under its quota): a fixed
  // part per microbatch, and seconds per MB (2^20 bytes) received or sent. 0: not modelled.
  double frame_s = 0;
  double wire_s_per_MB = 0;
};

// A directed network leg. bw_Mbps <= 0 means "unusable" (infinite transfer time).
struct Link {
  double bw_Mbps = 0;                     // Mbit/s (2^20 bits)
  double latency_ms = 0;                  // one-way latency, milliseconds
};

// Optional measured network. Each vector is either empty or complete.
struct Links {
  // Row-major D x D, [src * D + dst]; the diagonal is ignored. Empty: bandwidth
  // min(bw_src, bw_dst) and zero latency, as in the seed.
  std::vector<Link> host_to_host;
  // One per device: the client sending the model input to the first stage. Empty: not modelled.
  std::vector<Link> client_to_host;
  // One per device: the last stage returning the model output. Empty: not modelled (the seed).
  std::vector<Link> host_to_client;
};

struct Problem {
  Model model;
  std::vector<Device> devices;
  Links links;
  std::uint32_t batch_size = 8;           // microbatch size the profiles were taken at
  std::uint32_t dtype_bytes = 4;          // bytes per activation element (torch.float32: 4)
  std::uint32_t buffers_in = 2;           // receive buffers/queue slots per stage (seed default)
  std::uint32_t buffers_out = 2;          // send buffers/queue slots per stage (seed default)
  Objective objective = Objective::Throughput;
};

// Throws std::invalid_argument naming the first inconsistency (length mismatches, negative
// values, empty model, duplicate host names).
void validate(const Problem& problem);

}  // namespace pipeedge_sched
