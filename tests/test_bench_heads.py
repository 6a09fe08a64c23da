"""bench/heads.py's GPU bench run on the CPU at a toy size, Triton in its interpreter: a device lease is short, so a
slip in that code must show here first. The fp32 figures are real even there (the interpreter computes in fp32)."""
import argparse
import importlib.util
from pathlib import Path

from _kernel_cases import small_tiles  # also puts Triton in its interpreter

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_heads_bench_runs_on_the_cpu(monkeypatch):
    small_tiles(monkeypatch)  # several vocabulary tiles and row blocks even at this size
    spec = importlib.util.spec_from_file_location("bench_heads", ROOT / "bench" / "heads.py")
    heads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heads)
    res = heads.run_device(argparse.Namespace(n=64, e=32, v=300, h=32, iters=1), device="cpu")
    assert not [k for k in res if k.endswith("_error")], {k: v for k, v in res.items() if k.endswith("_error")}
    for name in ("triton", "torch", "reference"):
        assert res[f"gen_{name}_ms"] > 0 and res[f"gen_{name}_tflops"] > 0 and res[f"disc_{name}_ms"] > 0
    for opt in ("liger", "cce"):  # timed when installed, else said why not
        assert f"gen_{opt}_ms" in res or res[opt].startswith("not run")
    for head in ("gen", "disc"):
        assert res[f"{head}_triton_float32_loss_abs_err"] <= 1e-5
        assert res[f"{head}_triton_float32_grad_rel_err"] <= 1e-5
    assert res["gen_triton_float32_samples_equal_other_path"] == 1.0
    assert res["disc_triton_vs_gemms3"] > 0 and res["gen_triton_frac_of_peak"] > 0
