# Entry points. `make demo` and `make check` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
JOBS ?=
PYTEST_ARGS ?=
BIN = $(VENV)/bin

.PHONY: demo check check-fast check-block lint reference reference-all reference-coverage reference-sanitize bug-trees browser graphviz valgrind gdbserver gitlab-ci-local venv bench clean

$(BIN)/iotests-run: pyproject.toml meson.build $(shell find tests/qemu-iotests-runner/iotests_run -name '*.py' -o -name '*.json' -o -name '*.c' 2>/dev/null)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '.[test]'
	touch $@

venv: $(BIN)/iotests-run

# The reference QEMU trees (cached outside the repository; first time about 5 and 8 minutes).
reference:
	tools/build-reference-qemu

reference-all: reference
	tools/build-reference-qemu --version 10.0

# The 7.2 sources' gcov build beside it, for --coverage-map (first time about 15 minutes).
reference-coverage: reference
	tools/build-reference-qemu --coverage

# The 7.2 sources' ASan + UBSan build beside it (only the programs the iotests start), for the sanitizer tests.
reference-sanitize: reference
	tools/build-reference-qemu --sanitize

# The injected bugs' trees (tools/bugs.d): each reference version's sources with every bug's dormant patch,
# built once per set of patches (only the programs the iotests run), for tools/bugs and the e2e tests.
bug-trees: venv reference-all
	$(BIN)/python tools/bugs --build-only

# The main job: qcow2, quick group, on the reference tree.
demo: venv reference
	$(BIN)/iotests-run -f qcow2 -g quick --retry 1 $(if $(JOBS),-j $(JOBS))

# Debian's chromium, for the HTML report's browser test (installed when running as root).
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null || echo "make: chromium not installed: the HTML report's browser test is skipped"

# Debian's valgrind, for --valgrind (check's -valgrind) and its test (installed when running as root).
valgrind:
	@command -v valgrind >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
	@command -v valgrind >/dev/null || echo "make: valgrind not installed: the --valgrind tests are skipped"

# Debian's gdbserver, for --gdb (check's -gdb: the tests start QEMU under it) and its test (installed as root).
gdbserver:
	@command -v gdbserver >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdbserver >/dev/null; }
	@command -v gdbserver >/dev/null || echo "make: gdbserver not installed: the --gdb test is skipped"

# Debian's graphviz, to render the block-layer graphs of hung and crashed QEMUs as SVG (installed as root).
graphviz:
	@command -v dot >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; }
	@command -v dot >/dev/null || echo "make: graphviz not installed: block-layer graphs are kept as DOT only"

# gitlab-ci-local (npm) and rsync, so that the tests run tools/gitlab-ci/iotests.yml's jobs for real. Pinned:
# 4.52 runs on Debian 12's node 18 and on node 20; later releases need node 22. Installed into the cache.
GITLAB_CI_LOCAL_DIR = $(or $(IOTESTS_RUN_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/iotests-run)/gitlab-ci-local
gitlab-ci-local:
	@command -v rsync >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }
	@command -v npm >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@test -x $(GITLAB_CI_LOCAL_DIR)/node_modules/.bin/gitlab-ci-local || ! command -v npm >/dev/null || \
	  npm install --silent --no-audit --no-fund --prefix $(GITLAB_CI_LOCAL_DIR) gitlab-ci-local@4.52.0
	@test -x $(GITLAB_CI_LOCAL_DIR)/node_modules/.bin/gitlab-ci-local && command -v rsync >/dev/null || \
	  echo "make: gitlab-ci-local or rsync not installed: the GitLab template's pipeline test is skipped"

# ruff and mypy --strict over the package, tests/ and tools/ (pyproject.toml names the files), then the layers.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	PYTHONPATH=tests/qemu-iotests-runner $(BIN)/lint-imports --no-cache

# Unit and process tiers: seconds, no QEMU needed.
check-fast: venv
	$(BIN)/pytest -m 'not e2e' $(PYTEST_ARGS)

# Every tier, end-to-end tests on the reference tree included.
check: venv reference-all reference-coverage reference-sanitize bug-trees browser graphviz valgrind gdbserver gitlab-ci-local lint
	$(BIN)/pytest $(PYTEST_ARGS)

# QEMU's iotests through meson, as upstream's `make check-block`: suite block (qcow2 auto);
# SUITE=block-slow or block-thorough for more. QEMU_SOURCE/QEMU_BUILD default to the reference tree;
# make's -jN becomes iotests-run's job count (the runner reads MAKEFLAGS).
SUITE ?= block
MESON_BUILD ?= build/meson
check-block: venv reference
	@eval "$$(tools/build-reference-qemu 2>/dev/null | sed 's/^/export REF_/')"; \
	export QEMU_SOURCE="$${QEMU_SOURCE:-$$REF_QEMU_SOURCE}" QEMU_BUILD="$${QEMU_BUILD:-$$REF_QEMU_BUILD}"; \
	export PATH="$(abspath $(BIN)):$$PATH"; \
	test -f $(MESON_BUILD)/build.ninja || $(BIN)/meson setup $(MESON_BUILD) >/dev/null; \
	$(BIN)/meson test -C $(MESON_BUILD) --suite $(SUITE) --print-errorlogs

bench: venv reference
	$(BIN)/python tools/bench

clean:
	rm -rf $(VENV) build .mesonpy-* iotests-results .pytest_cache .mypy_cache .ruff_cache
