# Two commands for a newcomer: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo
AUDIT_DB := $(DEMO)/audit.db
# glibc's default allocator returns memory to the OS after every large tensor; keeping it made PyTorch 1.6-1.7x faster here
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000
export MALLOC_TOP_PAD_ := 1000000000

.PHONY: demo test lint clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml and come from the local wheel cache.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/bintally data index --out $(DEMO)/manifest.parquet --overwrite
	$(BIN)/bintally data split $(DEMO)/manifest.parquet
	$(BIN)/bintally data check $(DEMO)/manifest.parquet --json $(DEMO)/check.json
	$(BIN)/bintally data report $(DEMO)/manifest.parquet --out $(DEMO)/report
	$(BIN)/bintally train --data $(DEMO)/manifest.parquet --preset fast --out $(DEMO)/model --overwrite
	$(BIN)/bintally predict --model $(DEMO)/model bintally/sample/bin-images/00450.jpg bintally/sample/bin-images/00451.jpg
	$(BIN)/bintally evaluate --model $(DEMO)/model --data $(DEMO)/manifest.parquet --split test --json $(DEMO)/test.json --report $(DEMO)/evaluation
	$(BIN)/bintally tune --data $(DEMO)/manifest.parquet --n-trials 10 --jobs 2 --out $(DEMO)/tune
	$(BIN)/bintally calibrate --model $(DEMO)/model --data $(DEMO)/manifest.parquet --overwrite
	rm -f $(AUDIT_DB) $(AUDIT_DB)-wal $(AUDIT_DB)-shm $(DEMO)/labels.csv $(DEMO)/line-labels.csv $(DEMO)/*.token  # the demo's own store: a fresh model, a fresh audit
	$(BIN)/bintally audit run --model $(DEMO)/model --data bintally/sample --budget 0.10 --control 0.02 --db $(AUDIT_DB)
	$(BIN)/bintally audit list --run 1 --limit 10 --db $(AUDIT_DB)
	# people: the owner of the store file adds a counter, a second counter (for a recount) and a reviewer; each token is shown once
	for who in demo-counter:counter demo-recounter:counter demo-reviewer:reviewer; do \
		$(BIN)/bintally audit user add $${who%%:*} --role $${who#*:} --db $(AUDIT_DB) > $(DEMO)/$${who%%:*}.token || exit 1; done
	chmod 600 $(DEMO)/*.token
	# the first task whose record has SKU lines: the counter sees its SKUs (never their quantities) and counts one of each
	TASK=$$($(BIN)/python -c 'from bintally.audit import open_store, counter_view, list_tasks; s = open_store("$(AUDIT_DB)"); \
		print(next((t["id"] for t in list_tasks(s) if counter_view(s, t["id"]).get("lines")), 1))'); \
	COUNT=$$(BINTALLY_TOKEN=$$(cat $(DEMO)/demo-counter.token) $(BIN)/bintally audit show $$TASK --blind --db $(AUDIT_DB) | $(BIN)/python -c 'import json, sys; \
		lines = json.load(sys.stdin).get("lines") or []; print(" ".join("--line %s=1" % l["sku"] for l in lines) or "--qty 2")'); \
	BINTALLY_TOKEN=$$(cat $(DEMO)/demo-counter.token) $(BIN)/bintally audit count $$TASK $$COUNT --db $(AUDIT_DB) && \
	if $(BIN)/bintally audit show $$TASK --blind --db $(AUDIT_DB) | grep -q recount_requested; then \
		$(BIN)/bintally audit count $$TASK $$COUNT --recount --db $(AUDIT_DB) --token-file $(DEMO)/demo-recounter.token; fi && \
	FINAL=$$(echo $$COUNT | sed 's/--line/--final-line/g; s/--qty/--final/'); \
	echo "the counter tries to approve their own count (refused: exit 2):"; \
	! BINTALLY_TOKEN=$$(cat $(DEMO)/demo-counter.token) $(BIN)/bintally audit review $$TASK --approve $$FINAL --reason other --db $(AUDIT_DB) && \
	$(BIN)/bintally audit review $$TASK --approve $$FINAL --reason other --db $(AUDIT_DB) --token-file $(DEMO)/demo-reviewer.token
	$(BIN)/bintally audit events --limit 8 --db $(AUDIT_DB)
	$(BIN)/bintally audit list --runs --db $(AUDIT_DB)
	$(BIN)/bintally audit labels --out $(DEMO)/labels.csv --db $(AUDIT_DB)
	$(BIN)/bintally audit labels --lines --out $(DEMO)/line-labels.csv --db $(AUDIT_DB)

# Headless Chromium and its driver (Debian's packages) for the Selenium tests of the web page. Checked on every run
# (cheap) rather than stamped, so a machine that lost them gets them back. CI runs as root on a fresh machine; a
# developer without root gets sudo; without apt-get it only warns (the browser tests then skip, except under CI=true).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing chromium and chromium-driver with apt-get"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "warning: chromium/chromedriver missing and no apt-get to install them" >&2; fi

# PostgreSQL's server binaries (Debian's package) for the tests of the audit store and shared Optuna studies on
# PostgreSQL; the tests start a throwaway server as an unprivileged user (tests/postgres.py). Checked on every run, like
# `browser`; without apt-get it only warns (those tests then skip, except under CI=true).
.PHONY: postgres
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing postgresql with apt-get"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	else echo "warning: PostgreSQL (initdb) missing and no apt-get to install it" >&2; fi

# Two workers keep 2 cores busy while tests wait on processes, servers and signals; each test file stays in one worker
# (--dist loadfile), so a module's fixtures are built once. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev browser postgres
	$(BIN)/pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check bintally tests benchmarks

clean:
	rm -rf $(VENV) runs *.egg-info
