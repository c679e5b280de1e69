// A tiny in-house test harness: TEST_CASE registers a function, CHECK* throw on failure, and
// check_main.cpp runs every registered case and reports.
#pragma once

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace check {

struct Case {
  const char* name;
  void (*fn)();
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

struct Register {
  Register(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

struct Failure {
  std::string what;
};

inline bool near(double a, double b, double rel) {
  if (a == b) return true;  // covers equal infinities
  return std::fabs(a - b) <= rel * std::max({1.0, std::fabs(a), std::fabs(b)});
}

}  // namespace check

#define TEST_CASE(name)                                  \
  static void name();                                    \
  static const check::Register register_##name(#name, name); \
  static void name()

#define CHECK_MSG(cond, msg)                                                        \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::ostringstream os_;                                                       \
      os_ << __FILE__ << ":" << __LINE__ << ": CHECK(" #cond ") failed " << msg;    \
      throw check::Failure{os_.str()};                                              \
    }                                                                               \
  } while (0)

#define CHECK(cond) CHECK_MSG(cond, "")
#define CHECK_NEAR(a, b, rel) CHECK_MSG(check::near((a), (b), (rel)), "(" << (a) << " vs " << (b) << ")")
#define CHECK_THROWS(expr)                 \
  do {                                     \
    bool threw_ = false;                   \
    try {                                  \
      (void)(expr);                        \
    } catch (const std::exception&) {      \
      threw_ = true;                       \
    }                                      \
    CHECK_MSG(threw_, "expected a throw: " #expr); \
  } while (0)
