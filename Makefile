# PipeEdge developer entry points. Everything runs inside $(VENV), created on first use.
#   make demo   - set up and run the 3-stage local demo
#   make test   - set up and run the test suite (Python + C++ scheduler tests)

PYTHON     ?= python3
VENV       ?= .venv
# The CPU wheel on local disk; override e.g. TORCH_SPEC="torch==2.9.1" on boards that need it.
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.pipeedge-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-py test-cpp lint bench bench-transport bench-sched bench-quant clean

$(STAMP): pyproject.toml CMakeLists.txt scheduler_cpp/CMakeLists.txt $(wildcard protos/*.proto) $(wildcard scheduler_cpp/*.cpp scheduler_cpp/src/*.cpp scheduler_cpp/include/*/*.hpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,onnx]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: test-py test-cpp

test-py: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-cpp: $(STAMP)
	cmake -S scheduler_cpp -B build/cpp-tests -DPIPEEDGE_SCHED_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/cpp-tests -j2
	ctest --test-dir build/cpp-tests --output-on-failure

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-transport: $(STAMP)
	$(PY) bench/bench_transport.py

bench-sched: $(STAMP)
	$(PY) bench/bench_sched.py

bench-quant: $(STAMP)
	$(PY) bench/bench_quant.py

clean:
	rm -rf build $(VENV) .pytest_cache
