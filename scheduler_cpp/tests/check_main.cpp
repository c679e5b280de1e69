// Runs every TEST_CASE in the executable; exit status 1 if any failed.
#include <algorithm>
#include <exception>
#include <iostream>

#include "check.hpp"

int main() {
  int failed = 0;
  for (const check::Case& c : check::registry()) {
    try {
      c.fn();
      std::cout << "[ ok ] " << c.name << "\n";
    } catch (const check::Failure& f) {
      ++failed;
      std::cout << "[FAIL] " << c.name << ": " << f.what << "\n";
    } catch (const std::exception& e) {
      ++failed;
      std::cout << "[FAIL] " << c.name << ": unexpected exception: " << e.what() << "\n";
    }
  }
  std::cout << check::registry().size() - static_cast<std::size_t>(failed) << "/" << check::registry().size()
            << " passed\n";
  return failed ? 1 : 0;
}
