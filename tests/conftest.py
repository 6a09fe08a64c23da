"""Build gpt_ds's C++ CPU kernels once, before any test (and any rank a test spawns) needs them."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def _cpu_kernels_built():
    from gpt_ds.kernels import cpu_ext
    cpu_ext.ops()  # ~40 s on a fresh machine; later processes load the cached build
