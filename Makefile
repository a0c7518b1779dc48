# The single entry point: `make run` starts the service locally, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# Independent steps run two at a time: the two venvs (the project's and checkov's) install side by side, and lint,
# types, the template checks and the system packages of `make test` overlap (apt-get waits for a lock of its own).
MAKEFLAGS += --jobs=2

.PHONY: run test lint typecheck template-checks pgbouncer chromium unit integration e2e bench build wheel openapi screenshots clean handbook-eval

$(STAMP): pyproject.toml requirements-dev.txt layers/common/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (the Lambda runtime is python3.11)"; exit 1; }
	@# Made first, here and for checkov's venv inside it: two venvs each creating it at once, one failed (File exists).
	@mkdir -p $(VENV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/txguard local $(ARGS)

# Two test processes (pytest-xdist), each with its own databases; a file's tests stay in one process, so that its
# module fixtures (a served console, a browser) start once. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
# schemathesis gives the fuzz test of every API operation the same node id, and pytest-xdist would run only one of
# them (tests/conftest.py refuses that): the fuzz test runs in a process of its own beside the two, its output
# printed after theirs.
FUZZ_TEST := tests/reliability/test_hostile_input.py::test_fuzzed_requests_get_no_5xx_and_answers_that_match_the_document

test: lint typecheck template-checks pgbouncer chromium
	@fuzz_log=$$(mktemp); \
	$(BIN)/python -m pytest -q -p no:cacheprovider $(FUZZ_TEST) $(PYTEST_ARGS) > $$fuzz_log 2>&1 & fuzz=$$!; \
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --deselect $(FUZZ_TEST) \
		tests $(PYTEST_ARGS); status=$$?; \
	wait $$fuzz; fuzz_status=$$?; \
	echo "$(FUZZ_TEST), in a process of its own:"; cat $$fuzz_log; rm -f $$fuzz_log; \
	[ $$status -eq 0 ] && [ $$fuzz_status -eq 0 ]

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy layers/common/txguard functions/generate/txguard_generator tools/txguard_dev

# checkov runs from a venv of its own, inside .venv so that `make clean` and .gitignore cover it:
# its pins (boto3, pydantic, ...) conflict with requirements-dev.txt.
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
LAYER_BUILD := .aws-sam/build/CommonLayer/python

$(CHECKOV_STAMP): requirements-checkov.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	@mkdir -p $(VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	@touch $@

template-checks: $(STAMP) $(CHECKOV_STAMP)
	AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 $(BIN)/sam validate --lint --template template.yaml
	$(BIN)/cfn-lint template.yaml && echo "cfn-lint: 0 findings"
	$(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml
	SAM_CLI_TELEMETRY=0 $(BIN)/sam build --template template.yaml --build-dir .aws-sam/build --cached --cache-dir .aws-sam/cache
	$(BIN)/python -c "import sys; sys.path.insert(0, '$(LAYER_BUILD)'); import txguard, psycopg2, pydantic, orjson, aws_lambda_powertools; \
		assert all(m.__file__.startswith('$(CURDIR)/$(LAYER_BUILD)/') for m in (psycopg2, orjson)), (psycopg2.__file__, orjson.__file__); \
		print('layer ok:', txguard.__file__, '| psycopg2', psycopg2.__version__, 'libpq', psycopg2.extensions.libpq_version())"
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/template/test_artifacts.py

# The tests run the service through PgBouncer in transaction mode, a pooler that refuses startup options
# the way RDS Proxy does (tests/integration/test_pooler.py). Debian's package, installed once when missing.
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || { \
		echo "installing pgbouncer (Debian package)"; \
		flock /tmp/txguard-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null'; }

# The console's end-to-end tests and `make screenshots` drive Debian's chromium through Playwright (no browser
# download). Debian's package, installed once when missing.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium (Debian package)"; \
		flock /tmp/txguard-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null'; }

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) pgbouncer
	$(BIN)/python -m pytest -q tests/integration

e2e: $(STAMP) chromium
	$(BIN)/python -m pytest -q tests/e2e

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# The Handbook protocol of docs/evaluation.md on a fresh database: replay April-June, train and promote, replay July
# decided by the champion, evaluate July (about 25 minutes; HANDBOOK_DATA, HANDBOOK_DB, SEED, TRAIN_ARGS).
handbook-eval: $(STAMP)
	tools/handbook_eval.sh

# A picture of each console page in docs/console/, from labelled synthetic traffic on a database of its own.
screenshots: $(STAMP) chromium
	$(BIN)/python -m txguard_dev.console_screenshots --out docs/console $(ARGS)

wheel: $(STAMP)
	$(BIN)/python -m build --wheel --outdir dist .

openapi: $(STAMP)
	$(BIN)/txguard openapi --out docs/openapi.json

clean:
	rm -rf $(VENV) .aws-sam dist build .pytest_cache .mypy_cache .ruff_cache
