# gridwatch: `make demo` runs a simulated district on embedded defaults; `make test` runs the suite
# against real mosquitto, VictoriaMetrics and PostgreSQL (installed here from Debian when missing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# fonts-wqy-microhei: Chinese glyphs for Chromium, so the dashboard's screenshots in Chinese show
# words, not boxes (a crew's phone has its own; the test machine has none)
DEBS   := mosquitto mosquitto-clients victoria-metrics socat postgresql chromium fonts-wqy-microhei

.PHONY: demo test test-deps lint venv bench clean i18n

venv: $(STAMP)

# uv installs the ~50 dependencies in seconds where pip takes half a minute
# all of gridwatch's extras (a gateway installs [edge] alone, README "Install"): `make demo` runs
# the edge and the centre on one box, and the tests exercise both
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q -e '.[all,test]'
	rm -f $(VENV)/.installed-* && touch $@

demo: venv
	$(BIN)/gridwatch demo

# Debian packages the tests start for real; installed only when missing, and only as root
test-deps:
	@missing=""; \
	for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# lint-imports checks the import rule (pyproject.toml [tool.importlinter]): a back-pointing import
# fails here, and so `make test`
# the import rule first: it takes two seconds, and ruff would otherwise stop at a planted import
lint: venv
	$(BIN)/lint-imports --no-logo
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole-chain fault tests (tests/test_faults*.py) spend their minutes waiting on processes
# they start and kill, not on the CPU: they run beside the rest, in a second pytest, so the
# whole run stays well under 30 minutes on 2 cores. Their output is printed when both end.
# pytest exits 5 when a selection (PYTEST_ARGS="-k ...") matched no test: say so, don't fail.
FAULTS := tests/test_faults.py tests/test_faults_crash.py tests/test_faults_chaos.py \
          tests/test_faults_centre.py
test: venv test-deps lint
	@mkdir -p test-artifacts
	$(BIN)/python -m pytest -q -p no:cacheprovider $(FAULTS) $(PYTEST_ARGS) \
	  > test-artifacts/faults.log 2>&1 & faults=$$!; \
	$(BIN)/python -m pytest -q -p no:cacheprovider $(addprefix --ignore=,$(FAULTS)) $(PYTEST_ARGS); \
	rc=$$?; wait $$faults; frc=$$?; \
	echo "--- the fault tests (test-artifacts/faults.log) ---"; cat test-artifacts/faults.log; \
	[ $$rc -eq 5 ] && rc=0; [ $$frc -eq 5 ] && frc=0; \
	if [ $$rc -ne 0 ] || [ $$frc -ne 0 ]; then exit 1; fi

# The message catalogues (gridwatch/ground/i18n.py): extract every string marked _() or N_() in the
# code (the dashboard's own domain: t() and N_() in its scripts, data-i18n in its page), bring each language's .po up to date with them (new ones empty: tests/test_i18n.py then
# fails until someone translates them), and compile every domain's .po to the .mo the installs
# read. No line numbers and a sorted catalogue: a change of code elsewhere does not touch the .po.
I18N_CODE := gridwatch device_registry edge drivers cloud_bridge
LOCALES   := gridwatch/locale
i18n: venv
	@mkdir -p var/i18n
	$(BIN)/pybabel extract --no-wrap --no-location --sort-output --add-comments=TRANSLATORS: \
	  --project=gridwatch --version=0.1.0 -o var/i18n/gridwatch.pot $(I18N_CODE)
	$(BIN)/pybabel update --no-wrap --ignore-pot-creation-date --ignore-obsolete --no-fuzzy-matching \
	  -i var/i18n/gridwatch.pot -d $(LOCALES) -D gridwatch
	$(BIN)/pybabel extract --no-wrap --no-location --sort-output --no-default-keywords -k t -k N_ \
	  -F $(LOCALES)/dashboard.cfg --project=gridwatch --version=0.1.0 \
	  -o var/i18n/dashboard.pot device_registry/http/static
	$(BIN)/pybabel update --no-wrap --ignore-pot-creation-date --ignore-obsolete --no-fuzzy-matching \
	  -i var/i18n/dashboard.pot -d $(LOCALES) -D dashboard
	@for po in $(LOCALES)/*/LC_MESSAGES/*.po; do \
	  $(BIN)/pybabel compile -i $$po -o $${po%.po}.mo || exit 1; done

bench: venv test-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
