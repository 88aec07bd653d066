"""The engine's malloc setting (robverify.engine.allocator.reused_memory): inside it large freed blocks are reused
(few page faults), outside it glibc's default holds (a fresh mmap per block), leaving it gives the memory back, and
``ROBVERIFY_MALLOC=system`` declines it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
from robverify.engine.allocator import reused_memory
import torch

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

def faults_of_rounds():
    faults = []
    for i in range(40):  # a backward pass's pattern: large temporaries of a few sizes, small tensors between them
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        big = torch.empty(2**25 + (i % 3) * 1000)  # ~128 MB
        big.fill_(1.0)
        small = torch.empty(100)
        del big
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sum(faults[20:])

outside = faults_of_rounds()
with reused_memory() as applied:
    inside = faults_of_rounds()
    held = rss_mb()
after = rss_mb()
print(applied, outside, inside, round(held), round(after))
"""


def _run(env_value: str | None) -> tuple[str, int, int, int, int]:
    env = dict(os.environ)
    env.pop("ROBVERIFY_MALLOC", None)
    if env_value is not None:
        env["ROBVERIFY_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, *numbers = out.stdout.split()
    return (applied, *map(int, numbers))  # type: ignore[return-value]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_freed_blocks_are_reused_inside_the_context_and_returned_after_it():
    applied, outside, inside, held, after = _run(None)
    assert applied == "True"
    assert outside > 20 * 30000  # glibc's default: each 128 MB block a new mmap, ~32k minor page faults
    assert inside < outside / 4, (inside, outside)  # once warm, freed blocks are reused
    assert after < held - 100, (held, after)  # leaving the context trims the kept memory
    applied, outside, inside, _, _ = _run("system")
    assert applied == "False" and inside > 20 * 30000
