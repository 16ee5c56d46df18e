#!/usr/bin/env bash
# The one command that runs every test, also on a brand-new Debian 12 machine (as root or not):
# installs what is missing (Chromium, npm, python3-venv) with apt-get, makes .venv, installs the
# pinned test stack (tests/requirements.lock) and the project, builds the site (build.py), then runs
# pytest with any arguments given here. Exits with pytest's exit code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "Installing with apt-get: ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r tests/requirements.lock  # exactly the versions the references were checked against
"${pip[@]}" --no-deps --no-build-isolation -e .  # the project itself, nothing else fetched
.venv/bin/python build.py
exec .venv/bin/python -m pytest -q "$@"
