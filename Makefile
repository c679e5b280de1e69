# PipeEdge developer entry points. Everything runs inside $(VENV), created on first use.
#   make demo   - set up and run the 3-stage local demo
#   make test   - set up and run the test suite (Python + C++ scheduler tests)
#   make test-fast - in-process tests only (the edit loop, under a minute)
#   make bench  - the testbed benchmark report (bench/REPORT.md + PNGs; needs root)

PYTHON     ?= python3
VENV       ?= .venv
# The CPU wheel on local disk; override e.g. TORCH_SPEC="torch==2.9.1" on boards that need it.
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.pipeedge-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-py test-cpp lint bench bench-transport bench-sched bench-quant \
        bench-backends bench-decode bench-accuracy chaos clean

$(STAMP): pyproject.toml CMakeLists.txt scheduler_cpp/CMakeLists.txt $(wildcard protos/*.proto) $(wildcard scheduler_cpp/*.cpp scheduler_cpp/src/*.[ch]pp scheduler_cpp/include/*/*.hpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,onnx]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: test-py test-cpp

test-py: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Debian's chromium + chromium-driver for the dashboard's browser test (tests/test_dashboard.py):
# nothing to do once installed; where apt-get cannot run, a note (that test then skips).
.PHONY: browser
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; } || \
	  echo "browser: could not install chromium chromium-driver (root and apt-get needed); the dashboard's browser test will skip"

# The edit loop: in-process tests only (no stage processes, docker or namespaces), under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration" -n auto -q $(PYTEST_ARGS)

test-cpp: $(STAMP)
	cmake -S scheduler_cpp -B build/cpp-tests -DPIPEEDGE_SCHED_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/cpp-tests -j2
	ctest --test-dir build/cpp-tests --output-on-failure

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Emulated edge devices (network namespaces, cgroup CPU quotas): ~10 minutes on 2 cores.
bench: $(STAMP)
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[bench,dev,onnx]"
	$(PY) bench/run_report.py

bench-transport: $(STAMP)
	$(PY) bench/bench_transport.py

bench-sched: $(STAMP)
	$(PY) bench/bench_sched.py

bench-quant: $(STAMP)
	$(PY) bench/bench_quant.py

bench-backends: $(STAMP)
	$(PY) bench/bench_backends.py

bench-decode: $(STAMP)
	$(PY) bench/bench_decode.py

# Cosine similarity of compressed activations on real MiniLM weights (the README's table).
bench-accuracy: $(STAMP)
	$(PY) bench/quant_accuracy.py

# Issue 13's chaos test: CHAOS_CLIENTS concurrent clients, CHAOS_SECONDS of seeded faults of every
# kind on two served pipelines; exits 1 on any wrong, lost, duplicated or untyped result or a stall
# over CHAOS_STALL_S. Result JSON and timeline PNG in build/chaos/. ~15 minutes on 2 cores.
CHAOS_CLIENTS ?= 72
CHAOS_SECONDS ?= 600
CHAOS_SEED    ?= 13
CHAOS_STALL_S ?= 25
CHAOS_ARGS    ?=
chaos: $(STAMP)
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[bench,dev,onnx]"
	$(PY) bench/chaos.py --clients $(CHAOS_CLIENTS) --duration $(CHAOS_SECONDS) \
	  --seed $(CHAOS_SEED) --stall-bound $(CHAOS_STALL_S) --workdir build/chaos/work \
	  --json build/chaos/result.json --plot build/chaos/timeline.png $(CHAOS_ARGS)

clean:
	rm -rf build $(VENV) .pytest_cache

# --- Docker packaging (docker/): the offline wheelhouse and the container end-to-end test ------
#   make wheelhouse   - every wheel the image needs: wheelhouse/deps (torch CPU included) and
#                       wheelhouse/pipeedge (this project, `pip wheel . --no-deps`)
#   make test-docker  - base image, offline image build, 3 stage containers, deploy, parity,
#                       restart; tears everything down (docker/test_docker.sh)
WHEELHOUSE          ?= wheelhouse
# pyproject extras collected and baked into the image (the Dockerfile's PIPEEDGE_EXTRAS).
WHEELHOUSE_EXTRAS   ?= onnx
# More `pip download` options, e.g. an index that serves the CPU torch wheel for this platform:
#   WHEELHOUSE_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
WHEELHOUSE_PIP_ARGS ?=
# Fixed zip timestamps: an unchanged tree gives a byte-identical pipeedge wheel, so image
# rebuilds keep their cached layers.
WHEELHOUSE_EPOCH    ?= 315532800

.PHONY: wheelhouse test-docker

wheelhouse: $(STAMP)
	mkdir -p $(WHEELHOUSE)
	rm -rf $(WHEELHOUSE)/pipeedge $(WHEELHOUSE)/deps.new
	SOURCE_DATE_EPOCH=$(WHEELHOUSE_EPOCH) $(PY) -m pip wheel -q --no-deps -w $(WHEELHOUSE)/pipeedge -C build-dir=build/wheelhouse/{wheel_tag} .
	$(PY) -m pip download -q --only-binary=:all: -d $(WHEELHOUSE)/deps.new $(WHEELHOUSE_PIP_ARGS) \
	  "$(TORCH_SPEC)" "$$(ls $(WHEELHOUSE)/pipeedge/pipeedge-*.whl)$(if $(WHEELHOUSE_EXTRAS),[$(WHEELHOUSE_EXTRAS)])"
	rm -f $(WHEELHOUSE)/deps.new/pipeedge-*.whl
	rm -rf $(WHEELHOUSE)/deps && mv $(WHEELHOUSE)/deps.new $(WHEELHOUSE)/deps
	@echo "wheelhouse: $$(ls $(WHEELHOUSE)/deps | wc -l) dependency wheels + $$(ls $(WHEELHOUSE)/pipeedge) ($$(du -sh $(WHEELHOUSE) | cut -f1))"

test-docker: wheelhouse
	PY=$(PY) WHEELHOUSE=$(WHEELHOUSE) PIPEEDGE_EXTRAS=$(WHEELHOUSE_EXTRAS) bash docker/test_docker.sh
