# The two front-door commands: `make demo` and `make test`.
# Both create .venv from the pinned lock file first (once; re-done when the lock changes).
VENV      := .venv
PYTHON    := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
CORES     ?= 2
TOY       ?= configs/toy.yaml
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# One line per finished job (what, how long, what is left) instead of Snakemake's own output:
# the project's logger plugin (src/snakemake_logger_plugin_mobileclip_repro). Each job's log
# and Snakemake's complete log keep the details; plain `snakemake` is unchanged.
PROGRESS  := --logger mobileclip-repro

.PHONY: install demo ablation study test slurm-deps slurm-cluster dry-run-paper clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==0.13.8
	# Bytecode now, not at every job's start: where PYTHONDONTWRITEBYTECODE is set (as on CI),
	# each process would otherwise recompile torch + open_clip (~8 s a job on 2 cores).
	$(VENV)/bin/uv pip install --python $(PYTHON) --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --python $(PYTHON) --compile-bytecode --no-deps -e .
	$(PYTHON) -m compileall -q src
	touch $@

demo: $(STAMP)
	@start=$$(date +%s); \
	$(VENV)/bin/snakemake --cores $(CORES) --configfile $(TOY) $(PROGRESS) && \
	echo "Toy DAG finished in $$(( $$(date +%s) - start )) s (install excluded)" && \
	results=$$($(PYTHON) -c "from mobileclip_repro.config import load_config; print(load_config('$(TOY)')['results_dir'])") && \
	report=$$results/report && echo && \
	awk '/^## / && !/^## Learning efficiency/ {exit} {print}' $$report/results.md && \
	echo "(the teachers, cost, training and provenance follow in results.md)" && echo && \
	echo "table: $$report/results.csv  $$report/results.md" && \
	echo "plot:  $$report/learning_efficiency.png  $$report/learning_efficiency.pdf" && \
	echo "html:  $$report/report.html" && \
	echo "logs:  $$results/logs/ (one per job; training's per-step progress: $$results/logs/train/)"

# The paper's ablation ladder (Table 2) in the toy world: five rows, 2 seeds each.
ablation: $(STAMP)
	@start=$$(date +%s); \
	$(VENV)/bin/snakemake --cores $(CORES) --configfile configs/toy-ablation.yaml $(PROGRESS) && \
	echo "Toy ablation DAG finished in $$(( $$(date +%s) - start )) s (install excluded)" && echo && \
	cat results/toy-ablation/report/ablation.md && \
	echo "chart: results/toy-ablation/report/ablation.png  results/toy-ablation/report/ablation.pdf" && \
	echo "logs:  results/toy-ablation/logs/ (one per job; training's per-step progress: results/toy-ablation/logs/train/)"

# The toy study: the demo's arms on 3 dataset sizes plus online distillation, 3 seeds each, with the
# compute ledger and the data-efficiency multiplier.
study: $(STAMP)
	@start=$$(date +%s); \
	$(VENV)/bin/snakemake --cores $(CORES) --configfile configs/toy-study.yaml $(PROGRESS) && \
	echo "Toy study DAG finished in $$(( $$(date +%s) - start )) s (install excluded)" && echo && \
	cat results/toy-study/report/results.md && \
	echo "cost:  results/toy-study/report/cost.csv" && \
	echo "plots: results/toy-study/report/learning_efficiency.png  results/toy-study/report/learning_efficiency_compute.png" && \
	echo "data:  results/toy-study/report/data_efficiency.png" && \
	echo "logs:  results/toy-study/logs/ (one per job; training's per-step progress: results/toy-study/logs/train/)"

test: $(STAMP) slurm-deps
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# tests/test_slurm.py runs the toy DAG through a throwaway SLURM cluster on this machine:
# installs munge, slurmctld, slurmd and the client tools from Debian when they are missing
# (root with apt-get only; otherwise that test skips and says why). Idempotent.
slurm-deps:
	@bash tests/slurm/install.sh

# That cluster, for trying `snakemake --profile slurm` by hand (as root; Ctrl-C stops it).
slurm-cluster: $(STAMP) slurm-deps
	$(PYTHON) tests/slurm/cluster.py $(or $(SLURM_DIR),/tmp/mobileclip-slurm)

dry-run-paper: $(STAMP)
	for c in configs/paper/*.yaml; do $(VENV)/bin/snakemake -n --quiet --configfile $$c || exit 1; done

clean:
	rm -rf results/toy results/toy-ablation results/toy-study results/toy-test .snakemake
