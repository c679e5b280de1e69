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

.PHONY: install demo test test-fast test-py test-cpp lint typecheck bench bench-transport bench-sched bench-quant \
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

# Debian's chromium + chromium-driver for the dashboard's browser test (tests/integration/test_dashboard.py):
# nothing to do once installed; where apt-get cannot run, a note (that test then skips).
.PHONY: browser
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; } || \
	  echo "browser: could not install chromium chromium-driver (root and apt-get needed); the dashboard's browser test will skip"

# The edit loop: tests/unit/ only (in process: no stage processes, docker or namespaces), under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -n auto -q $(PYTEST_ARGS)

test-cpp: $(STAMP)
	cmake -S scheduler_cpp -B build/cpp-tests -DPIPEEDGE_SCHED_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/cpp-tests -j2
	ctest --test-dir build/cpp-tests --output-on-failure

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy over the installed package's layout (pipeedge.stage_server is stage_server/, and so on):
# a tree of links in build/typecheck, the generated gRPC modules from the install. Settings and
# the modules not yet clean are in pyproject.toml [tool.mypy].
TYPECHECK_TREE := build/typecheck/pipeedge
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p $(TYPECHECK_TREE)/_proto
	for e in pipeedge/*; do case $$e in */_proto|*/__pycache__) ;; *) ln -s $(CURDIR)/$$e $(TYPECHECK_TREE)/;; esac; done
	ln -s $(CURDIR)/stage_server $(TYPECHECK_TREE)/stage_server
	ln -s $(CURDIR)/coordinator $(TYPECHECK_TREE)/coordinator
	ln -s $(CURDIR)/apps $(TYPECHECK_TREE)/apps
	cp pipeedge/_proto/__init__.py $(TYPECHECK_TREE)/_proto/
	ln -s $$($(PY) -c "import os, pipeedge._proto.stage_pb2 as m; print(os.path.dirname(m.__file__))")/*_pb2*.py* $(TYPECHECK_TREE)/_proto/
	cd build/typecheck && $(CURDIR)/$(PY) -m mypy --config-file $(CURDIR)/pyproject.toml \
	  --python-executable $(CURDIR)/$(PY) -p pipeedge

# Emulated edge devices (network namespaces, cgroup CPU quotas), up to 16 of them: ~26 minutes
# on 2 cores (1569 s measured; make bench-transport: ~20 s).
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

# Weights dtypes (float32/float16/bfloat16/int8, torch and onnx): accuracy, speed, memory.
bench-weights: $(STAMP)
	$(PY) bench/bench_weights.py

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

# --- arm64 (Raspberry Pi / Jetson CPU) from this x86_64 machine: docs/arm64.md ------------------
#   make wheelhouse-arm64 - aarch64 dependency wheels (a stage's runtime deps only) and this
#                           project's aarch64 wheel, cross-compiled (g++-aarch64-linux-gnu)
#   make test-arm64       - arm64 image from docker/Dockerfile (qemu binfmt emulation), 2 arm64
#                           stage containers + 1 x86 stage in one pipeline, parity vs the unsplit
#                           model (docker/arm64/test_arm64.sh)
# PyPI's aarch64 torch wheels from 2.11 on are CUDA builds (~3 GB of CUDA libraries, and no
# cp311 aarch64 cuDNN 13 wheel); 2.10.0 is the newest CPU-only one there. With the PyTorch CPU index:
#   TORCH_SPEC_ARM64="torch==2.13.0+cpu" WHEELHOUSE_ARM64_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC_ARM64          ?= torch==2.10.0
WHEELHOUSE_ARM64          ?= build/arm64/wheelhouse
WHEELHOUSE_ARM64_EXTRAS   ?=
WHEELHOUSE_ARM64_PIP_ARGS ?=
# The target's CPython (Debian 12's python3 in the arm64 base image).
ARM64_PYTHON              ?= 3.11
ARM64_CP                  := cp$(subst .,,$(ARM64_PYTHON))
# Dependency wheels for glibc 2.17 to ARM64_GLIBC_MINOR (2.28: any board from Debian 10 / Ubuntu 20.04
# on), as pip on such a board would pick them.
ARM64_GLIBC_MINOR         ?= 28
ARM64_PLATFORM_ARGS       := --only-binary=:all: --python-version $(ARM64_PYTHON) --implementation cp \
                             --abi $(ARM64_CP) --platform linux_aarch64 \
                             $(foreach v,$(shell seq 17 $(ARM64_GLIBC_MINOR)),--platform manylinux_2_$(v)_aarch64)

.PHONY: wheelhouse-arm64 test-arm64

wheelhouse-arm64: $(STAMP)
	@v=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); [ "$$v" = "$(ARM64_PYTHON)" ] || { \
	  echo "wheelhouse-arm64: ARM64_PYTHON=$(ARM64_PYTHON) but $(PY) is Python $$v, whose headers the extension is built with: use a Python $(ARM64_PYTHON) venv (VENV=...)"; exit 2; }
	bash docker/arm64/env.sh compiler
	mkdir -p $(WHEELHOUSE_ARM64)
	rm -rf $(WHEELHOUSE_ARM64)/pipeedge $(WHEELHOUSE_ARM64)/deps.new
	SOURCE_DATE_EPOCH=$(WHEELHOUSE_EPOCH) $(PY) -m pip wheel -q --no-deps -w $(WHEELHOUSE_ARM64)/pipeedge \
	  -C build-dir=build/arm64/wheel-build -C wheel.tags=$(ARM64_CP)-$(ARM64_CP)-linux_aarch64 \
	  -C cmake.define.CMAKE_TOOLCHAIN_FILE=$(CURDIR)/docker/arm64/aarch64-toolchain.cmake \
	  -C cmake.define.PYTHON_MODULE_EXTENSION=.cpython-$(subst .,,$(ARM64_PYTHON))-aarch64-linux-gnu.so .
	$(PY) -m pip download -q --no-deps $(ARM64_PLATFORM_ARGS) -d $(WHEELHOUSE_ARM64)/deps.new \
	  $(WHEELHOUSE_ARM64_PIP_ARGS) "$(TORCH_SPEC_ARM64)"
	$(PY) docker/arm64/requirements.py --python $(ARM64_PYTHON) --extras "$(WHEELHOUSE_ARM64_EXTRAS)" \
	  $(WHEELHOUSE_ARM64)/deps.new/torch-*.whl $(WHEELHOUSE_ARM64)/pipeedge/pipeedge-*.whl \
	  > $(WHEELHOUSE_ARM64)/requirements.txt
	$(PY) -m pip download -q $(ARM64_PLATFORM_ARGS) -d $(WHEELHOUSE_ARM64)/deps.new \
	  --find-links $(WHEELHOUSE_ARM64)/deps.new $(WHEELHOUSE_ARM64_PIP_ARGS) -r $(WHEELHOUSE_ARM64)/requirements.txt
	rm -rf $(WHEELHOUSE_ARM64)/deps && mv $(WHEELHOUSE_ARM64)/deps.new $(WHEELHOUSE_ARM64)/deps
	@echo "wheelhouse-arm64: $$(ls $(WHEELHOUSE_ARM64)/deps | wc -l) dependency wheels + $$(ls $(WHEELHOUSE_ARM64)/pipeedge) ($$(du -sh $(WHEELHOUSE_ARM64) | cut -f1))"

test-arm64: wheelhouse-arm64
	PY=$(PY) WHEELHOUSE=$(WHEELHOUSE_ARM64) PIPEEDGE_EXTRAS=$(WHEELHOUSE_ARM64_EXTRAS) \
	  bash docker/arm64/test_arm64.sh
