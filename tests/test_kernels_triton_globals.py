"""Compiled Triton refuses a kernel that reads a plain module-level number; its interpreter (what CI runs) accepts it.

The discriminator head's GELU constants once passed every CPU test and failed to compile on the first GPU. This reads
each kernel's source and holds every global number it names to `tl.constexpr`, so CI catches what only a GPU would.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import numbers
import textwrap

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.jit import KernelInterface  # noqa: E402  (compiled JITFunction and TRITON_INTERPRET's twin)

MODULES = ("gpt_ds.kernels.generator_triton", "gpt_ds.kernels.discriminator_triton")


def plain_number_globals(module) -> list[str]:
    found = []
    for name, fn in vars(module).items():
        if not isinstance(fn, KernelInterface):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in vars(module):
                value = vars(module)[node.id]
                if isinstance(value, numbers.Number) and not isinstance(value, tl.constexpr):
                    found.append(f"{module.__name__}.{name} reads {node.id} = {value!r}")
    return found


@pytest.mark.parametrize("name", MODULES)
def test_kernels_read_no_plain_number_globals(name):
    module = importlib.import_module(name)
    assert any(isinstance(v, KernelInterface) for v in vars(module).values()), f"{name} has no Triton kernel to check"
    assert plain_number_globals(module) == []


def test_the_check_sees_a_plain_number_global(tmp_path):
    import importlib.util
    path = tmp_path / "fake_kernels.py"  # triton.jit reads the source from a file
    path.write_text(textwrap.dedent("""
        import triton
        import triton.language as tl
        HALF = 0.5
        OK = tl.constexpr(2.0)

        @triton.jit
        def k(X):
            tl.store(X, tl.load(X) * HALF * OK)
    """))
    spec = importlib.util.spec_from_file_location("fake_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert plain_number_globals(module) == ["fake_kernels.k reads HALF = 0.5"]
