# CMake toolchain for the project's aarch64 wheel built on x86_64 (make wheelhouse-arm64):
# Debian's cross compiler (apt-get install g++-aarch64-linux-gnu). The C++ scheduler links only
# libstdc++/libc, so no target sysroot beyond the compiler's own is needed; the Python headers are
# the build interpreter's (CPython 3.11's are the same on both LP64 little-endian targets).
# The Makefile passes the target's extension suffix (PYTHON_MODULE_EXTENSION): pybind11 would
# otherwise take the x86_64 build interpreter's.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
