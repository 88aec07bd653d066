"""The engine's malloc setting (robverify.engine.allocator): applied once on glibc Linux when the engine is
imported, never with ``ROBVERIFY_MALLOC=system``, and large freed blocks are then reused instead of returned."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import robverify.engine.allocator as allocator
import robverify.engine  # noqa: F401  (applies the setting)
import torch
faults = []
for i in range(40):  # a backward pass's pattern: large temporaries of a few sizes, small tensors between them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    big = torch.empty(2**25 + (i % 3) * 1000)  # ~128 MB
    big.fill_(1.0)
    small = torch.empty(100)
    del big
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(allocator._applied, sum(faults[20:]))
"""


def _run(env_value: str | None) -> tuple[str, int]:
    env = dict(os.environ)
    env.pop("ROBVERIFY_MALLOC", None)
    if env_value is not None:
        env["ROBVERIFY_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_large_freed_blocks_are_reused_and_the_setting_can_be_declined():
    applied, kept = _run(None)
    assert applied == "True"
    applied, system = _run("system")
    assert applied == "False"
    assert system > 20 * 30000  # glibc's default: each 128 MB block a new mmap, ~32k minor page faults
    assert kept < system / 4, (kept, system)  # once warm, freed blocks are reused
