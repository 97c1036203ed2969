"""Host code never imports jax: the engine, the HTTP layer, structured outputs, the builder and
the CLI load in a fresh interpreter with jax, jaxlib and flax left out of sys.modules (the builder
imports them only when it builds an engine)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

HOST_PACKAGES = ["jaxserve.engine", "jaxserve.entrypoints", "jaxserve.structured",
                 "jaxserve.checkpoints"]
HOST_MODULES = ["jaxserve", "jaxserve.builder", "jaxserve.cli", "jaxserve.config",
                "jaxserve.interfaces", "jaxserve.llm", "jaxserve.outputs", "jaxserve.pull",
                "jaxserve.sampling_params", "jaxserve.gc_policy", "jaxserve.hardware"]
DEVICE_PACKAGES = ("jax", "jaxlib", "flax")


def host_modules() -> list[str]:
    names = list(HOST_MODULES)
    for package in HOST_PACKAGES:
        module = __import__(package, fromlist=["_"])
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    return names


def loaded_device_packages(modules: list[str]) -> dict[str, list[str]]:
    """Import the modules one after another in a fresh interpreter; for each device package that
    got loaded, the first module whose import loaded it."""
    script = f"""
import importlib, json, sys
found = {{}}
for name in {modules!r}:
    importlib.import_module(name)
    for package in {DEVICE_PACKAGES!r}:
        if package in sys.modules and package not in found:
            found[package] = name
print(json.dumps(found))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_host_side_loads_without_jax():
    modules = host_modules()
    assert "jaxserve.engine.scheduler" in modules and "jaxserve.entrypoints.app" in modules
    assert loaded_device_packages(modules) == {}


def test_the_check_sees_a_device_import():
    # the same check over a device module must report it, or the test above proves nothing
    assert "jax" in loaded_device_packages(["jaxserve.interfaces", "jaxserve.runner.sampler"])

