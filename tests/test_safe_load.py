"""A checkpoint is untrusted input: a planted pickle that would run code is refused, with the file named, by the loader
itself, by `gpt-ds export` (DeepSpeed's zero_to_fp32 inside) and by `--resume` (DeepSpeed's load_checkpoint inside);
a truncated file is named instead of a zip-reader traceback."""
import json
import os
import shutil

import pytest
import torch

from gpt_ds.errors import GptDsError
from gpt_ds.checkpoint import safe_load
from gpt_ds.checkpoint import write_manifest
from test_train import FAST, gpt_ds


class _Planted:
    """Unpickling this runs `touch MARKER`: what a crafted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path, marker):
    torch.save({"module": {"w": torch.zeros(2)}, "extra": _Planted(marker)}, path)


def test_loader_refuses_code_and_names_truncated_files(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    plant(bad, marker)
    with pytest.raises(GptDsError, match="bad.pt: refused to load"):
        safe_load.load(bad, map_location="cpu")
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3), "n": 3}, good)
    assert safe_load.load(good)["n"] == 3
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(GptDsError, match="cut.pt: unreadable .* truncated or corrupt"):
        safe_load.load(cut)
    # DeepSpeed's own call, routed through the loader inside the context, and torch.load restored after it
    with safe_load.weights_only_loads():
        with pytest.raises(GptDsError, match="refused"):
            torch.load(bad, map_location="cpu", weights_only=False)
    assert torch.load is safe_load._TORCH_LOAD and not marker.exists()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("safe") / "run"
    gpt_ds("pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=2", "checkpoint.every=2", "--nproc", "2")
    return d


def test_export_and_resume_refuse_a_planted_pickle(saved_run, tmp_path):
    for target, command in (("generator/zero_pp_rank_0_mp_rank_00_model_states.pt", "export"),
                            ("discriminator/zero_pp_rank_1_mp_rank_00_optim_states.pt", "export"),
                            ("generator/zero_pp_rank_0_mp_rank_00_optim_states.pt", "resume")):
        run = tmp_path / f"{command}-{target.replace('/', '-')}"
        shutil.copytree(saved_run, run)
        marker = tmp_path / f"ran-{command}"
        step_dir = run / "checkpoints" / "step_0000002"
        plant(step_dir / target, marker)
        # the manifest is a checksum list, not a signature: an attacker rewrites it too, and loading must still refuse
        state = json.loads((step_dir / "trainer_state.json").read_text())
        write_manifest(step_dir, state, json.loads((step_dir / "manifest.json").read_text())["zero_stages"])
        if command == "export":
            p = gpt_ds("export", run, "--out", tmp_path / "out", check=False)
        else:
            p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={run}", "train.max_steps=4", "checkpoint.every=2",
                       "--nproc", "2", "--resume", "auto", check=False)
        assert p.returncode != 0 and not marker.exists(), (command, target)
        assert f"{target.split('/')[-1]}: refused to load" in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
