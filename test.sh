#!/usr/bin/env bash
# Install lbproxy with its test extra into .venv and run the whole test suite (slow scenario tests included).
set -euo pipefail
cd "$(dirname "$0")"
# The dashboard test drives Debian's chromium through its chromium-driver (never a browser download).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test.sh: the dashboard test needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver" >&2
  fi
fi
# The PostgreSQL store's tests start their own server from Debian's postgresql binaries (never a mock).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "test.sh: the queue store tests need Debian's postgresql: apt-get install -y postgresql" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python -m ruff check lbproxy tests examples
.venv/bin/python -m mypy lbproxy
.venv/bin/lint-imports  # the layers (.importlinter): pure decisions, one kubernetes wrapper, the request path
# The runpod SDK's own venv for the queue tests (.cache/, built once): outside pytest, so that the build is
# not counted against a test's timeout.
.venv/bin/python tests/queue/sdk_venv.py >/dev/null
# Two test processes per core (pytest-xdist), at most 8: the tests mostly wait on the processes they start.
# Each gets its own block of loopback ports (tests/conftest.py); an idle process steals queued tests from a busy
# one (worksteal), so that a few long tests do not make a tail. LBPROXY_TEST_PROCESSES=0 runs them in this process.
processes=$(( $(nproc) * 2 > 8 ? 8 : $(nproc) * 2 ))
exec .venv/bin/python -m pytest -q -n "${LBPROXY_TEST_PROCESSES:-$processes}" --dist worksteal "$@"
