"""The host allocator settings: large step buffers are reused, not page-faulted back in."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
if sys.argv[1] == "1":
    from fergate.runtime import tune_host_allocator
    assert tune_host_allocator()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, d: x @ d)  # a 75 MB output, like a large kernel's gradient
x, d = jnp.ones((4608, 16)), jnp.ones((16, 4096))
windows = []  # the heap grows once or twice while buffers overlap; then it is steady
for _ in range(4):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        jax.block_until_ready(f(x, d))
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5)
print(min(windows))
"""


def faults_per_call(tuned: bool) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if tuned else "0"], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_large_buffers_are_reused_not_faulted_in():
    pages = 4608 * 4096 * 4 / 4096
    assert faults_per_call(False) > 0.5 * pages  # the problem it solves: every call faults the output in
    assert faults_per_call(True) < 0.05 * pages
