# flatlab: `make demo` and `make test` set everything up on a fresh machine.
#
# torch is installed first and pinned: an unpinned torch resolves to a CUDA build of several GB.
# On a GPU machine that already has torch, keep it: make test TORCH_SPEC= VENV_FLAGS=--system-site-packages

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.flatlab-installed
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: demo demo-kernels test test-kernels test-slow lint figs bench bench-gpu gpu-wheels wheel-check clean heterogeneity primal-dual compression tradeoff implicit-flatness mechanism large-batch regime faults docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[test,notebook,tensorboard,docs,cluster]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flatlab demo

# two pytest workers, one test file each at a time (--dist loadfile keeps a file's fixtures in one
# process; --dist loadgroup with xdist_group marks did not group under pytest 9.2 and xdist 3.8):
# on 2 cores the suite took 0.77 of its one-process time (648 s against 838 s, measured beside the
# same background load), since much of it waits on spawned processes; TEST_WORKERS=0 runs it in
# one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m ruff check flatlab tests benchmarks paper_figs notebooks/*.py docs/*.py
	$(BIN)/python -m pytest -q -m "not slow" $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# the golden runs and the float32 comparisons (pytest -m kernels) under every kernel level this CPU
# offers (x86: DEFAULT, AVX2, AVX-512 ATen kernels, with MKL, oneDNN, numpy and OpenBLAS held to
# the same level), with the largest measured rounding ratio of each kind beside its budget; run it
# whenever numbers may have moved (tests/kernels.py; about 2 minutes a level, 6 in all, on 2 cores)
test-kernels: $(STAMP)
	$(BIN)/python -m tests.kernels

# the demo once per kernel level this CPU offers (results/demo-kernels/<level>, about 5 minutes a
# level on 2 cores), then how far its numbers move between them beside their standard errors
demo-kernels: $(STAMP)
	$(BIN)/python -m tests.kernels --demo results/demo-kernels

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# the documentation site into build/site, every warning an error (mkdocs.yml: strict)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

figs: $(STAMP)
	$(BIN)/python paper_figs/spectral_gap.py
	$(BIN)/python paper_figs/heterogeneity.py
	$(BIN)/python paper_figs/primal_dual.py
	$(BIN)/python paper_figs/compression.py
	$(BIN)/python paper_figs/tradeoff.py
	$(BIN)/python paper_figs/implicit_flatness.py
	$(BIN)/python paper_figs/mechanism.py
	$(BIN)/python paper_figs/faults.py

# the flatness-versus-optimization study (centralized, consensus, diffusion; 3 topologies, 2 batch
# regimes, 3000 steps, 5 seeds, escape experiment, theory overlay) at its CPU scale (3 h 13 min on
# 2 cores); --scale full on a GPU
tradeoff: $(STAMP)
	$(BIN)/python -m flatlab.studies tradeoff --scale small

# the data-heterogeneity study at its CPU scale: k=10 and k=2 classes per node, 3000 steps, 5 seeds,
# learning rates tuned on 3 seeds and bracketed (about 100 min on 2 cores; resumable; --scale full
# on a GPU; --rejudge re-judges the committed tables without training)
heterogeneity: $(STAMP)
	$(BIN)/python -m flatlab.studies heterogeneity --scale small

# the primal-dual study (NGPD, ECL against DSGD, GT, MT) at its CPU scale: 1500 steps, 5 seeds,
# bracketed learning rates (estimated 80-90 min on 2 cores; resumable); --scale full on a GPU
primal-dual: $(STAMP)
	$(BIN)/python -m flatlab.studies primal_dual --scale small

# the compression study (CHOCO-SGD against AdaGossip) at its CPU scale: ring, alpha 0.1, top-k 1%
# and QSGD, 2000 steps, 5 seeds, bracketed gamma (resumable); --scale full on a GPU
compression: $(STAMP)
	$(BIN)/python -m flatlab.studies compression --scale small

# implicit against explicit flatness (SGD, SAM, diffusion with and without SAM on a ring and the
# exponential graph, local SGD with H = 4, 16) at its CPU scale: 16 nodes, batch 512, 2000 steps,
# 5 seeds, bracketed lr and rho (about 2.5 h on 2 cores; resumable); --scale full on a GPU
implicit-flatness: $(STAMP)
	$(BIN)/python -m flatlab.studies implicit_flatness --scale small

# the mechanism (does the nodes' disagreement act on x̄ as ½ tr(HΣ); is it aligned with the top
# curvature; does the linear theory predict it): 16 nodes, 7 methods, 2 constant steps, 2000
# steps, 3 seeds (about 40 min on 2 cores; resumable)
mechanism: $(STAMP)
	$(BIN)/python -m flatlab.studies mechanism --scale small

# the search for centralized SGD's large-batch generalization gap (batch 32 against 2048 at a fixed
# epoch budget, each batch's step tuned; 5 settings, 5 seeds; several hours on 2 CPU cores)
large-batch: $(STAMP)
	$(BIN)/python -m flatlab.studies large_batch --scale small

# the flatness paper's claims inside the large-batch regime, at the search's setting (issue 33)
regime: $(STAMP)
	$(BIN)/python -m flatlab.studies regime --scale small

# networks that fail (lost exchanges, stragglers) for diffusion, gradient tracking, SGP and
# AD-PSGD: accuracy, disagreement (against the theory's prediction), flatness and simulated time;
# 16 nodes, 20 methods, 1500 constant steps, 5 seeds (resumable)
faults: $(STAMP)
	$(BIN)/python -m flatlab.studies faults --scale small

bench: $(STAMP)
	$(BIN)/python benchmarks/spectral.py
	$(BIN)/python benchmarks/step_time.py
	$(BIN)/python benchmarks/comm.py
	$(BIN)/python benchmarks/curvature.py
	$(BIN)/python benchmarks/ngpd.py
	$(BIN)/python benchmarks/compress.py
	$(BIN)/python benchmarks/mix.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/measure_cost.py

# the GPU benchmarks that matter most and the CUDA test stage, in about 8 minutes on one GPU;
# tables under $$OUT or benchmarks/gpu-out (benchmarks/gpu.sh). It uses the machine's own python3
# and CUDA torch (not the CPU venv), with this checkout on PYTHONPATH and the wheels of .whl/
bench-gpu:
	PYTHONPATH=$(CURDIR) bash benchmarks/gpu.sh

# a wheel built from this checkout installs into a fresh environment (torch pinned first) and
# runs the small demo there: what a user of the released package gets
wheel-check:
	rm -rf build/wheel-check && mkdir -p build/wheel-check
	$(PYTHON) -m venv build/wheel-check/venv
	build/wheel-check/venv/bin/pip install -q build "$(TORCH_SPEC)"
	build/wheel-check/venv/bin/python -m build --wheel -o build/wheel-check/dist .
	build/wheel-check/venv/bin/pip install -q build/wheel-check/dist/flatlab-*.whl
	cd build/wheel-check && OMP_NUM_THREADS=1 venv/bin/flatlab demo --small --out demo --no-progress

# the pure-Python packages a bare GPU machine's image lacks, as wheels in .whl/ (run it where pip
# reaches the registry; carry .whl/ to the GPU machine, where benchmarks/gpu.sh installs them)
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: -d .whl mnist1d==0.0.2.post1 pyhessian==0.1

clean:
	rm -rf $(VENV) .pytest_cache paper_figs/out results/demo
