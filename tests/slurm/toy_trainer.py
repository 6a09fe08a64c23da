"""A seconds-fast stand-in for `gpt-ds pretrain` with the same contract, so the SLURM plumbing (template, signals,
requeue, resume) is tested apart from the model: the real trainer is tested through the same template in
tests/test_slurm_cluster.py.

`python tests/slurm/toy_trainer.py pretrain CONFIG run.dir=D train.max_steps=N [checkpoint.every=K] [step_time=S]
--resume auto`: every rank adds a seeded gradient (all_reduce over gloo) to a 4-vector; rank 0 appends
{"step", "loss", "world_size"} to D/metrics.jsonl; checkpoints are D/checkpoints/step_XXXXXXX.pt + `latest`. The
loss of step s depends only on the steps before it, so a resumed run must log exactly the losses of an uninterrupted
one, and `expected_losses` says what they are.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from gpt_ds.dist import REQUEUE_EXIT_CODE, PreemptionHandler, detect_env, export_env  # noqa: E402


def gradient(step: int, rank: int):
    import torch
    return torch.randn(4, generator=torch.Generator().manual_seed(1000 * step + rank), dtype=torch.float64)


def expected_losses(max_steps: int, world_size: int) -> list[float]:
    import torch
    w = torch.ones(4, dtype=torch.float64)
    out = []
    for step in range(1, max_steps + 1):
        w = w - 0.1 * sum(gradient(step, r) for r in range(world_size))
        out.append(float((w ** 2).sum()))
    return out


def _save(ckpt_dir: Path, step: int, w) -> None:
    import torch
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:07d}.pt"
    torch.save({"step": step, "w": w}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    (ckpt_dir / "latest.tmp").write_text(path.name)
    os.replace(ckpt_dir / "latest.tmp", ckpt_dir / "latest")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["pretrain"])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--resume", default="")
    args = parser.parse_intermixed_args(argv)
    opts = dict(o.split("=", 1) for o in args.overrides)
    handler = PreemptionHandler()
    handler.install()
    env = detect_env()
    export_env(env)
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="env://")
    node = os.environ.get("SLURMD_NODENAME", "?")
    print(f"toy_trainer: rank {env.rank}/{env.world_size} on {node} (node {env.node_rank}), "
          f"launcher {env.launcher}", file=sys.stderr, flush=True)
    run_dir = Path(opts["run.dir"])
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    max_steps, every = int(opts["train.max_steps"]), int(opts.get("checkpoint.every", 2))
    w, start = torch.ones(4, dtype=torch.float64), 0
    if args.resume == "auto" and (ckpt_dir / "latest").exists():
        state = torch.load(ckpt_dir / (ckpt_dir / "latest").read_text().strip(), weights_only=True)
        w, start = state["w"], state["step"]
        print(f"toy_trainer: rank {env.rank} resumed at step {start}", file=sys.stderr, flush=True)
    for step in range(start + 1, max_steps + 1):
        g = gradient(step, env.rank)
        dist.all_reduce(g)
        w = w - 0.1 * g
        time.sleep(float(opts.get("step_time", 0.3)))
        if env.rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": float((w ** 2).sum()), "world_size": env.world_size,
                                    "node": node}) + "\n")
        stop = handler.should_stop()
        if env.rank == 0 and (stop or step % every == 0 or step == max_steps):
            _save(ckpt_dir, step, w)
        if stop:
            dist.barrier()  # every rank is past the save before any exits
            print(f"toy_trainer: rank {env.rank} stopping at step {step} ({handler.signal_name or 'peer'})",
                  file=sys.stderr, flush=True)
            dist.destroy_process_group()
            return REQUEUE_EXIT_CODE
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
