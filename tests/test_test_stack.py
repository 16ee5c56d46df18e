"""The Python test stack is pinned: every dependency pyproject.toml names is in tests/requirements.lock
with an exact version, and that version is the one installed (tests/run.sh installs from the lock)."""

import re
import tomllib
from importlib.metadata import version

from conftest import ROOT


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def lock():
    pins = {}
    for line in (ROOT / "tests" / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"not pinned to one version: {line!r}"
            pins[normalized(name)] = pinned
    return pins


def test_every_dependency_is_pinned_and_installed_at_its_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = project["dependencies"] + project["optional-dependencies"]["test"]
    pins = lock()
    for requirement in named:
        name = normalized(re.match(r"[A-Za-z0-9_.-]+", requirement).group())
        assert name in pins, f"{name} is a dependency but not in tests/requirements.lock"
    for name, pinned in pins.items():
        assert version(name) == pinned, f"{name} {version(name)} is installed, the lock says {pinned}"
