"""Build gpt_ds's C++ CPU kernels once, before any test (and any rank a test spawns) needs them."""
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "device_numerics: kernel numerics that bench/gpu_check.sh also runs on a GPU "
                                       "(GPT_DS_TEST_DEVICE=cuda); on the CPU they run like every other test")


@pytest.fixture(scope="session", autouse=True)
def _cpu_kernels_built():
    if os.environ.get("GPT_DS_TEST_DEVICE", "cpu") != "cpu":
        return  # the GPU run of the device_numerics tests needs no C++ CPU kernels
    from gpt_ds.kernels import cpu_ext
    cpu_ext.ops()  # ~40 s on a fresh machine; later processes load the cached build
