# The two set-up commands are `make run` and `make test`; see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test serve demo worker beat web bench drills drill-hosts fuzz lint clean node_modules

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# axe-core for the accessibility checks in the browser tests, from the committed lock file (never a CDN at test time).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

node_modules: node_modules/.installed

## Run the product as production does, on its embedded defaults: the web server, a Celery worker and
## beat (Procfile.dev, under honcho; Ctrl-C stops all three), SQLite, a broker that is a folder
## (.cache/broker, no server), demo data, the sandbox LMS. `make run PORT=8001` serves on another port.
## The demo logins skip the second factor (DEMO_SKIP_2FA, refused when DEBUG is off).
## A CELERY_BROKER_URL or DATABASE_URL in the environment is used instead (e.g. Redis, PostgreSQL).
## The filesystem broker ignores the host: "localhost" only spares kombu's "No hostname was supplied".
EMBEDDED := SANDBOX_LMS=True DEMO_SKIP_2FA=True CELERY_BROKER_URL=$(or $(CELERY_BROKER_URL),filesystem://localhost/)
run: venv
	$(EMBEDDED) $(PY) manage.py migrate --noinput
	$(EMBEDDED) $(PY) manage.py load_demo --base-url http://$(HOST):$(PORT)
	@echo "  Processes:   web (http://$(HOST):$(PORT)/), worker, beat (Procfile.dev); Ctrl-C stops them"
	exec env $(EMBEDDED) HOST=$(HOST) PATH="$(abspath $(VENV))/bin:$$PATH" \
		$(VENV)/bin/honcho start --env /dev/null --procfile Procfile.dev --port $(PORT)

## Run the whole test suite (SQLite by default; PostgreSQL/Redis when DATABASE_URL/CELERY_BROKER_URL are set),
## one pytest-xdist worker per core (TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= auto
test: venv node_modules
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --maxprocesses=6 --durations=15

## Production processes (set DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY, DEBUG=False, ALLOWED_HOSTS).
web: venv
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(VENV)/bin/gunicorn config.wsgi:application --bind $(HOST):$(PORT) --workers 4 --threads 4

worker: venv
	$(VENV)/bin/celery -A config worker --loglevel=INFO --pool=threads --concurrency=16 -Q grades,resync,celery

## Run beat on two hosts or more: one schedules at a time (config/beat.py, a lock in Redis), the others stand by.
beat: venv
	$(VENV)/bin/celery -A config beat --loglevel=INFO --scheduler config.beat:LeaderScheduler

## Grade delivery benchmark and fault drills (need DATABASE_URL=postgres://… and CELERY_BROKER_URL=redis://…
## on 127.0.0.1; see docs/benchmarks.md). BENCH_ARGS=--quick, DRILLS_ARGS="--only NAME".
bench: venv
	$(PY) scripts/bench_delivery.py $(BENCH_ARGS)

drills: venv
	$(PY) scripts/drills.py $(DRILLS_ARGS)

## The multi-host drill (scripts/drill_hosts.py): 2 web hosts behind HAProxy, 2 worker and 2 beat hosts, in network
## namespaces it makes and removes (10.77.0.0/24), losing hosts while students take quizzes. Needs root.
## DRILL_HOSTS_ARGS=--pgbouncer: the tool's hosts reach PostgreSQL through PgBouncer in transaction pooling.
drill-hosts: venv
	command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || apt-get install -y -q haproxy
	command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || apt-get install -y -q pgbouncer
	$(PY) scripts/drill_hosts.py $(DRILL_HOSTS_ARGS)

## Fuzz the LTI login and launch endpoints (Hypothesis, FUZZ_EXAMPLES in all; see docs/benchmarks.md).
FUZZ_EXAMPLES ?= 10000
fuzz: venv
	@start=$$(date +%s); \
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -p no:randomly -q tests/courseware/test_fuzz_launch.py \
		--hypothesis-show-statistics && \
	echo "fuzz: $(FUZZ_EXAMPLES) examples, 0 failures, $$(( $$(date +%s) - start )) s"

lint: venv
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) db.sqlite3 .cache
