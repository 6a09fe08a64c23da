"""End to end through the CLI on CPU: 2-rank ZeRO-3, rank/stage invariance, exact resume, export parity, bad input."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FAST = ["data.synthetic=true", "model.vocab_size=300", "model.num_layers=1", "model.hidden_size=64",
        "model.num_heads=2", "model.intermediate_size=128", "model.embedding_size=32", "data.seq_len=32",
        "model.max_position_embeddings=64", "train.global_batch=8", "logging.every=1", "logging.progress_bar=false",
        "optim.warmup_steps=2"]


def gpt_ds(*args, check=True, timeout=240, cwd=ROOT):
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_PROCID"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-m", "gpt_ds.cli", *map(str, args)], env=env, cwd=cwd, text=True,
                       capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"gpt-ds {' '.join(map(str, args))} exited {p.returncode}\n{p.stderr[-4000:]}")
    return p


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def by_step(rows, key="loss"):
    return {r["step"]: r[key] for r in rows}


# The numbers a refactor must not change (issue 16): per-step losses and gradient norms of `full_run` and the
# exported weights, recorded from the code before a restructuring. A change in them means the change altered the
# computation. They are recorded per machine type (CPU model, torch build; 2 ranks of one thread): the same code gives
# the same bits on one CPU model, and differs in the last bits on another (seen: 1e-8 relative between two x86-64
# models, from their BLAS kernels). On a recorded machine the check is exact; on another it holds the numbers to
# GOLDEN_RTOL and leaves the weights' digest out. Re-record (GPT_DS_RECORD_GOLDEN=1) only when a dependency or a
# deliberate change of the `tiny` recipe changes them, and say so in the commit.
GOLDEN = ROOT / "tests" / "golden" / "tiny_zero3_2rank.json"
GOLDEN_KEYS = ("loss", "gen_loss", "disc_loss", "gen_grad_norm", "disc_grad_norm")
GOLDEN_RTOL = 1e-6  # a real change of the computation moves these by far more (a recipe change: > 1e-3)


def machine_key() -> str:
    import platform
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() \
        else platform.processor()
    return f"{platform.machine()} | {model} | torch {torch.__version__}"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """6 uninterrupted steps, 2 ranks, ZeRO-3 for both engines, dropout on."""
    d = tmp_path_factory.mktemp("full") / "run"
    (d.parent / "shm_before.json").write_text(json.dumps(os.listdir("/dev/shm")))  # what the run may leave there
    gpt_ds("pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=6", "checkpoint.every=3", "--nproc", "2")
    return d


def test_the_generator_accuracy_at_shown_masks_leaves_out_the_kept_positions():
    """ELECTRA keeps 15% of the masked positions as they are: copying them is easy, so gen_acc alone overstates what
    the generator predicts from context; gen_acc_at_mask counts only the positions its input showed as [MASK]."""
    from gpt_ds.train.metrics import StepStats
    stats = StepStats()
    correct = torch.tensor([True, False, True, True, True])
    shown = torch.tensor([True, True, False, True, False])  # positions 2 and 4 kept (both right: copied)
    stats.add_generator(torch.tensor(2.0), 5, correct, torch.zeros(5, dtype=torch.bool), shown)
    out = stats.reduce()
    assert out["gen_acc"] == pytest.approx(4 / 5)
    assert out["gen_acc_at_mask"] == pytest.approx(2 / 3)
    bare = StepStats()  # callers that do not say (benches) get no such key rather than a wrong one
    bare.add_generator(torch.tensor(2.0), 5, correct, torch.zeros(5, dtype=torch.bool))
    assert "gen_acc_at_mask" not in bare.reduce()


def test_two_rank_zero3_run_writes_checkpoints_metrics_and_config(full_run):
    rows = metrics(full_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("gen_loss", "disc_loss", "gen_acc", "gen_acc_at_mask", "disc_auc", "disc_precision", "disc_recall",
                "replaced_share", "disc_loss_prior", "tokens_per_s", "mfu", "gen_grad_norm", "disc_grad_norm"):
        assert key in rows[-1], key
    ck = full_run / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_0000006"
    step = ck / "step_0000006"
    assert sorted(p.name for p in (step / "generator").glob("zero_pp_rank_*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    state = json.loads((step / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["consumed_samples"] == 48 and state["world_size"] == 2
    assert (full_run / "config.yaml").is_file() and list((full_run / "tb").iterdir())
    assert not list(ck.glob("*.tmp"))


def test_resume_gives_the_same_losses(full_run, tmp_path):
    d = tmp_path / "run"
    common = ["pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=6", "checkpoint.every=100", "--nproc", "2"]
    gpt_ds(*common, "train.stop_at=3")
    assert (d / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    gpt_ds(*common, "--resume", "auto")
    resumed, full = metrics(d), metrics(full_run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for key in GOLDEN_KEYS:  # bit-identical: the resumed run is the run, and full_run's numbers are the recorded ones
        assert by_step(resumed, key) == by_step(full, key), key


def test_checkpoints_without_state_are_not_overwritten_by_a_fresh_start(full_run, tmp_path):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(full_run, d)
    for state in (d / "checkpoints").glob("step_*/trainer_state.json"):
        state.unlink()
    before = (d / "metrics.jsonl").read_text()
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=6", "--nproc", "2", "--resume", "auto",
               check=False, timeout=60)
    assert p.returncode == 2 and "none usable" in p.stderr and "trainer_state.json missing" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert (d / "metrics.jsonl").read_text() == before


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_step_and_logs_each_step_once(full_run, tmp_path):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(full_run, d)
    step6 = d / "checkpoints" / "step_0000006"
    manifest = json.loads((step6 / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["zero_stages"] == {"generator": 3, "discriminator": 3}
    assert {"trainer_state.json", "rng/rank_00001.pt"} <= set(manifest["files"])
    shard = sorted((step6 / "discriminator").glob("*optim_states.pt"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a save cut short by a full disk
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=6", "checkpoint.every=3", "--nproc", "2",
               "--resume", "auto")
    assert f"step_0000006 skipped: discriminator/{shard.name}:" in p.stderr and "manifest says" in p.stderr
    resumed, full = metrics(d), metrics(full_run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]  # steps 4-6 ran again and are logged once
    for key in ("loss", "gen_loss", "disc_loss"):
        a, b = by_step(resumed, key), by_step(full, key)
        assert all(abs(a[s] - b[s]) <= 1e-6 for s in range(1, 7)), (key, a, b)
    assert not checkpoint_problems(d / "checkpoints" / "step_0000006")  # saved again, whole


def checkpoint_problems(step_dir):
    from gpt_ds.checkpoint import verify
    return verify(step_dir)


def test_verify_names_missing_resized_and_changed_files(tmp_path):
    from gpt_ds.checkpoint import find_resume, verify, write_manifest
    from gpt_ds.errors import GptDsError
    ck = tmp_path / "checkpoints"
    for step in (3, 6):
        s = ck / f"step_{step:07d}"
        (s / "rng").mkdir(parents=True)
        (s / "trainer_state.json").write_text("{}")
        (s / "rng" / "rank_00000.pt").write_bytes(b"abcd" * 100)
        (s / "weights.pt").write_bytes(b"w" * 1000)
        write_manifest(s, {"step": step, "world_size": 1}, {"generator": 0})
    s6 = ck / "step_0000006"
    assert verify(s6) == [] and find_resume(ck, "auto") == s6
    (s6 / "weights.pt").write_bytes(b"x" + b"w" * 999)  # same size, other bytes
    assert verify(s6) == ["weights.pt: checksum differs from the manifest (the file changed after the save)"]
    assert verify(s6, checksums=False) == []
    (s6 / "rng" / "rank_00000.pt").unlink()
    assert "rng/rank_00000.pt: missing" in verify(s6)
    assert find_resume(ck, "auto") == ck / "step_0000003"  # falls back
    (ck / "latest").write_bytes(bytes(range(256)))  # garbage in the advisory pointer changes nothing
    assert find_resume(ck, "auto") == ck / "step_0000003"
    with pytest.raises(GptDsError, match="does not match its manifest"):
        find_resume(ck, str(s6))
    (ck / "step_0000003" / "weights.pt").write_bytes(b"")
    with pytest.raises(GptDsError, match="none usable"):
        find_resume(ck, "auto")


def test_zero3_two_ranks_equals_zero0_one_rank(tmp_path):
    nodrop = ["model.hidden_dropout=0", "model.attention_dropout=0", "train.max_steps=3", "checkpoint.every=100"]
    z3, z0 = tmp_path / "z3", tmp_path / "z0"
    gpt_ds("pretrain", "tiny", *FAST, *nodrop, f"run.dir={z3}", "--nproc", "2")
    gpt_ds("pretrain", "tiny", *FAST, *nodrop, f"run.dir={z0}", "train.grad_accum=2",
           "deepspeed.generator=ds_configs/zero0_fp32.json", "deepspeed.discriminator=ds_configs/zero0_fp32.json")
    a, b = metrics(z3), metrics(z0)
    for key in ("loss", "gen_loss", "disc_loss", "gen_grad_norm", "disc_grad_norm"):
        for s in (1, 2, 3):
            x, y = by_step(a, key)[s], by_step(b, key)[s]
            assert abs(x - y) <= 1e-5 * max(1.0, abs(y)), (key, s, x, y)


def _weights_digest(folder: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: the weights, not the file's header or order."""
    import hashlib

    from safetensors.torch import load_file
    h = hashlib.sha256()
    for name, t in sorted(load_file(folder / "model.safetensors").items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _golden(measured: dict, part: str) -> tuple[dict, bool]:
    """The recorded numbers for `part`, and whether they were recorded on this machine type (then: exact)."""
    machines = json.loads(GOLDEN.read_text())["machines"] if GOLDEN.is_file() else {}
    here = machine_key()
    if os.environ.get("GPT_DS_RECORD_GOLDEN") == "1":
        machines.setdefault(here, {})[part] = measured
        machines[here]["python"] = sys.version.split()[0]
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"machines": machines}, indent=1) + "\n")
    assert any(part in m for m in machines.values()), f"{GOLDEN} has no '{part}': record it with GPT_DS_RECORD_GOLDEN=1"
    if part in machines.get(here, {}):
        return machines[here][part], True
    return next(m[part] for m in machines.values() if part in m), False


def _golden_steps(full_run) -> dict:
    rows = metrics(full_run)
    return {key: [r[key] for r in rows] for key in GOLDEN_KEYS}


def test_losses_and_gradient_norms_are_the_recorded_ones(full_run):
    measured = _golden_steps(full_run)
    expected, _ = _golden(measured, "steps_1_to_6")
    for key in GOLDEN_KEYS:  # to GOLDEN_RTOL: a fresh install on the recording machine type was seen to differ in
        # the last bits too (CI, 2026-12-05), so bits are compared only for the weights below, when these match bitwise
        ok = all(abs(a - b) <= GOLDEN_RTOL * abs(b) for a, b in zip(measured[key], expected[key], strict=True))
        assert ok, (f"{key} differs from {GOLDEN.name} beyond {GOLDEN_RTOL:g} ({machine_key()})", measured[key],
                    expected[key])


def test_a_two_rank_run_leaves_nothing_in_dev_shm(full_run):
    """DeepSpeed's CPU shared-memory all-reduce keeps a 69 MB file per rank in /dev/shm after the job when LOCAL_SIZE
    equals the world size at init_distributed; gpt_ds sets LOCAL_SIZE (for device_count) only after it."""
    before = set(json.loads((full_run.parent / "shm_before.json").read_text()))
    left = {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("deepspeed")}  # not others' semaphores
    assert not left, left


def test_export_reloads_with_plain_transformers(full_run, tmp_path):
    out = tmp_path / "export"
    p = gpt_ds("export", full_run, "--out", out, "--verify")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["step"] == 6 and info["verify_max_abs_diff"] <= 1e-5
    measured = {m: _weights_digest(out / m) for m in ("generator", "discriminator")}
    expected, exact = _golden(measured, "export_sha256")
    steps = _golden_steps(full_run)
    if exact and steps == _golden(steps, "steps_1_to_6")[0]:
        # the same bits in every number: then the same bits in every weight
        assert measured == expected, "the exported weights differ from the recorded ones"
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, ElectraForMaskedLM, ElectraForPreTraining
    disc = AutoModelForPreTraining.from_pretrained(out / "discriminator")
    gen = AutoModelForMaskedLM.from_pretrained(out / "generator")
    assert isinstance(disc, ElectraForPreTraining) and isinstance(gen, ElectraForMaskedLM)
    assert (out / "discriminator" / "model.safetensors").is_file() and not list(out.rglob("*.bin"))
    # tiny's generator softmax is untied (configs/tiny.yaml): its own output matrix, apart from the input table
    assert not gen.config.tie_word_embeddings
    assert gen.generator_lm_head.weight.data_ptr() != gen.electra.embeddings.word_embeddings.weight.data_ptr()
    # the GDES merge: the exported table is E_G + delta, not the zero-initialised delta alone
    assert disc.electra.embeddings.word_embeddings.weight.abs().mean() > 1e-3
    ids = torch.randint(5, 300, (2, 16))
    assert disc(ids).logits.shape == (2, 16) and torch.isfinite(gen(ids).logits).all()


@pytest.mark.parametrize("overrides, needle", [
    (["optim.lrr=1e-3"], "did you mean 'optim.lr'"),
    (["train.global_batch=7"], "train.global_batch 7 is not divisible"),
    (["train.micro_batch=3"], "train.global_batch 8 != train.micro_batch 3"),
    (["data.synthetic=false", "data.sources=[/nonexistent/corpus]"], "'/nonexistent/corpus' does not exist"),
    (["deepspeed.overrides={train_batch_size: 64}"], "contradicts train.global_batch"),
    (["objective.kind=elektra"], "did you mean 'electra'"),
    (["model.initializer_range=0"], "model.initializer_range = 0.0 must be in (0, 1)"),
    (["optim.lr=-1e-3"], "optim.lr = -0.001 must be a finite number > 0"),
    (["optim.lr=nan"], "optim.lr = nan must be a finite number > 0"),
    (["optim.warmup_steps=-5"], "optim.warmup_steps = -5 must be >= 0"),
    (["checkpoint.every=0"], "checkpoint.every = 0 must be > 0"),
    (["logging.every=0"], "logging.every = 0 must be > 0"),
    (["model.hidden_dropout=1.5"], "model.hidden_dropout = 1.5 must be in [0, 1)"),
    (["objective.disc_mlm_weight=-1"], "objective.disc_mlm_weight = -1.0 must be a finite number >= 0"),
    (["objective.disc_scl_weight=1", "objective.scl_rows=0"], "objective.scl_rows = 0.0 must be in (0, 1]"),
    # the generator's ds_config optimizer is held to optim.generator_lr, the discriminator's to optim.lr
    (["optim.generator_lr=3e-3", "deepspeed.generator_overrides={optimizer: {params: {lr: 1.0e-3}}}"],
     "'optimizer.params.lr' = 0.001 contradicts optim.generator_lr = 0.003"),
])
def test_bad_config_is_refused_before_launch(tmp_path, overrides, needle):
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={tmp_path / 'r'}", *overrides, "--nproc", "2", check=False,
               timeout=60)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_nproc_below_one_is_refused(tmp_path):
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={tmp_path / 'r'}", "--nproc", "0", check=False, timeout=60)
    assert p.returncode == 2 and "--nproc 0" in p.stderr and "Traceback" not in p.stderr


def test_unparsable_ds_config_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 3,}}')
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={tmp_path / 'r'}", f"deepspeed.generator={bad}", check=False,
               timeout=60)
    assert p.returncode == 2 and str(bad) in p.stderr and "not valid JSON" in p.stderr


def test_resume_with_another_model_config_is_refused(full_run):
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={full_run}", "model.hidden_size=128", "train.max_steps=8",
               "--nproc", "2", check=False, timeout=60)
    assert p.returncode == 2 and "model.hidden_size: 64 -> 128" in p.stderr and "Traceback" not in p.stderr


def test_mlm_baseline_trains_and_exports_an_encoder(tmp_path):
    d = tmp_path / "mlm"
    gpt_ds("pretrain", "tiny", *FAST, f"run.dir={d}", "objective.kind=mlm", "objective.mask_token_frac=0.8",
           "objective.keep_frac=0.1", "objective.random_frac=0.1", "train.max_steps=3", "checkpoint.every=100")
    rows = metrics(d)
    assert [r["step"] for r in rows] == [1, 2, 3] and "disc_loss" not in rows[-1]
    assert abs(rows[-1]["loss"] - rows[-1]["gen_loss"]) < 1e-9
    p = gpt_ds("export", d, "--out", tmp_path / "out", "--verify")
    assert json.loads(p.stdout.strip().splitlines()[-1])["objective"] == "mlm"
    from transformers import AutoConfig
    conf = AutoConfig.from_pretrained(tmp_path / "out" / "generator")
    assert conf.hidden_size == 64 and conf.num_hidden_layers == 1  # the full-size encoder, not a 1/4 generator
    assert not (tmp_path / "out" / "discriminator").exists()


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path):
    """Same losses and gradient norms with the layers recomputed in the backward (dropout on: its RNG is replayed)."""
    common = ["pretrain", "tiny", *FAST, "model.num_layers=2", "train.max_steps=3", "checkpoint.every=100",
              "deepspeed.generator=ds_configs/zero3_fp32.json"]
    gpt_ds(*common, f"run.dir={tmp_path / 'plain'}")
    gpt_ds(*common, f"run.dir={tmp_path / 'ckpt'}", "train.activation_checkpointing=true")
    a, b = metrics(tmp_path / "plain"), metrics(tmp_path / "ckpt")
    for key in ("loss", "gen_loss", "disc_loss", "gen_grad_norm", "disc_grad_norm"):
        for s in (1, 2, 3):
            x, y = by_step(a, key)[s], by_step(b, key)[s]
            assert abs(x - y) <= 1e-6 * max(1.0, abs(y)), (key, s, x, y)


def test_tied_output_embeddings_train_on_two_ranks_and_export(tmp_path):
    """model.tie_output_embeddings=true (ELECTRA's and BERT's own choice): the generator's softmax reads the input
    table under ZeRO-3, and the export ties them again, reloading exactly."""
    d = tmp_path / "tied"
    gpt_ds("pretrain", "tiny", *FAST, f"run.dir={d}", "model.tie_output_embeddings=true", "train.max_steps=3",
           "checkpoint.every=100", "--nproc", "2")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(d))
    out = tmp_path / "out"
    info = json.loads(gpt_ds("export", d, "--out", out, "--verify").stdout.strip().splitlines()[-1])
    assert info["verify_max_abs_diff"] <= 1e-5
    from transformers import AutoModelForMaskedLM
    gen = AutoModelForMaskedLM.from_pretrained(out / "generator")
    head, table = gen.generator_lm_head.weight, gen.electra.embeddings.word_embeddings.weight
    assert head.data_ptr() == table.data_ptr() and gen.config.tie_word_embeddings


def test_a_job_log_gets_one_progress_line_per_interval_and_checkpoint_lines(tmp_path):
    """stderr is not a terminal here, as in a SLURM .out file: rank 0 alone prints the documented line."""
    import re
    d = tmp_path / "run"
    p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=4", "logging.every=2",
               "checkpoint.every=4", "--nproc", "2")
    line = re.compile(r"^gpt_ds: step (\d+)/4 \((\d+\.\d)%\) loss \d+\.\d{4} mlm \d+\.\d{4} mlm_acc \d\.\d{3} "
                      r"rtd \d+\.\d{4} auc \d\.\d{3} clm \d+\.\d{4} tok/s \d+ (?:mfu \d+\.\d{3} )?mem \d+\.\d\d GiB "
                      r"elapsed \d+:\d\d:\d\d eta \d+:\d\d:\d\d$", re.M)
    found = line.findall(p.stderr)
    assert [int(s) for s, _ in found] == [2, 4], p.stderr[-3000:]
    assert [float(pct) for _, pct in found] == [50.0, 100.0]
    assert len(re.findall(r"^gpt_ds: checkpoint step 4 saved to .*step_0000004 \(\d+\.\d s\)$", p.stderr, re.M)) == 1


def test_a_save_on_a_full_disk_names_the_cause_and_leaves_no_partial_folder(tmp_path):
    import errno
    from gpt_ds.errors import GptDsError
    from gpt_ds import checkpoint

    class Engine:
        def __init__(self, fail):
            self.fail = fail

        def save_checkpoint(self, path, tag, save_latest):
            (Path(path) / tag).mkdir(parents=True, exist_ok=True)
            (Path(path) / tag / "part.pt").write_bytes(b"x" * 100)
            if self.fail:
                raise OSError(errno.ENOSPC, "No space left on device")

        def zero_optimization_stage(self):
            return 0

    class Engines:
        def __init__(self, fail):
            self.generator, self.discriminator = Engine(False), Engine(fail)

    ck = tmp_path / "checkpoints"
    checkpoint.save(ck, 3, Engines(False), {"step": 3, "world_size": 1}, rank=0, keep_last=2)
    with pytest.raises(GptDsError, match="step_0000006 failed: no space left on the device") as err:
        checkpoint.save(ck, 6, Engines(True), {"step": 6, "world_size": 1}, rank=0, keep_last=2)
    assert "step_0000003 is intact" in str(err.value)
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_0000003"]  # no step_0000006.tmp left behind


def _pages(p: Path) -> int:
    return -(-p.stat().st_size // 4096) * 4096


@contextlib.contextmanager
def _tmpfs(mnt: Path, size: int, options: str = ""):
    """A real file system of `size` bytes (mounting needs root: CI here runs as root)."""
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(4, size // 1024)}k{options}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CI here has it): {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(full_run, tmp_path):
    """Room for full_run's first checkpoint and half of its second."""
    step6 = full_run / "checkpoints" / "step_0000006"
    upto3 = sum(_pages(p) for p in full_run.rglob("*") if p.is_file() and step6 not in p.parents)
    with _tmpfs(tmp_path / "disk", upto3 + sum(_pages(p) for p in step6.rglob("*") if p.is_file()) // 2) as mnt:
        yield mnt


def test_the_checkpoint_size_estimate_is_close_to_a_real_step(full_run):
    from gpt_ds.config import load_config
    from gpt_ds.zero.check import checkpoint_bytes
    real = sum(p.stat().st_size for p in (full_run / "checkpoints" / "step_0000003").rglob("*") if p.is_file())
    estimate = checkpoint_bytes(load_config("tiny", FAST))
    assert 0.8 <= estimate / real <= 1.25, (estimate, real)


def test_a_run_dir_without_room_or_write_access_is_refused_before_launch(full_run, tmp_path):
    one_step = sum(_pages(p) for p in (full_run / "checkpoints" / "step_0000003").rglob("*") if p.is_file())
    with _tmpfs(tmp_path / "small", one_step // 4) as small, _tmpfs(tmp_path / "ro", 1 << 20, ",ro") as ro:
        for run_dir, needle in ((small / "run", "MiB free on its file system, one checkpoint needs about"),
                                (ro / "a" / "run", f"cannot write in {ro}")):
            p = gpt_ds("pretrain", "tiny", *FAST, f"run.dir={run_dir}", "--nproc", "2", check=False, timeout=60)
            assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
            assert "cannot start" in p.stderr and not run_dir.exists()
            p = gpt_ds("check", "tiny", *FAST, f"run.dir={run_dir}", check=False, timeout=60)
            assert p.returncode == 1 and needle in p.stdout, p.stdout


def test_a_full_disk_stops_the_run_with_the_cause_and_the_run_resumes_exactly_once_there_is_room(small_disk, full_run):
    d = small_disk / "run"
    common = ["pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=6", "checkpoint.every=3", "--nproc", "2"]
    p = gpt_ds(*common, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "saving checkpoint" in p.stderr and "failed: no space left on the device" in p.stderr
    assert "step_0000003 is intact" in p.stderr
    ck = d / "checkpoints"
    assert sorted(x.name for x in ck.iterdir()) == ["latest", "step_0000003"]  # the partial step 6 is gone
    assert not checkpoint_problems(ck / "step_0000003")
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # room again
    gpt_ds(*common, "--resume", "auto")
    rows = metrics(d)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in GOLDEN_KEYS:  # the uninterrupted run's numbers, bit for bit
        assert [r[key] for r in rows] == [r[key] for r in metrics(full_run)], key


def test_a_launch_reads_every_checkpoint_byte_once(tmp_path, monkeypatch):
    """The check before launch hashes the step folder; the ranks it starts compare sizes and times only, unless a file
    changed in between."""
    from gpt_ds import checkpoint
    from gpt_ds.errors import GptDsError
    monkeypatch.setenv(checkpoint.VERIFIED_ENV, "")  # restored after the test
    hashed = []
    real = checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda p: hashed.append(p.name) or real(p))
    ck = tmp_path / "checkpoints"
    s = ck / "step_0000003"
    (s / "rng").mkdir(parents=True)
    (s / "trainer_state.json").write_text("{}")
    (s / "weights.pt").write_bytes(b"w" * 1000)
    checkpoint.write_manifest(s, {"step": 3, "world_size": 1}, {"generator": 0})
    hashed.clear()
    assert checkpoint.find_resume(ck, "auto") == s and sorted(hashed) == ["trainer_state.json", "weights.pt"]
    checkpoint.mark_verified(s)
    hashed.clear()
    assert checkpoint.find_resume(ck, "auto") == s and checkpoint.find_resume(ck, str(s)) == s and hashed == []
    (s / "weights.pt").write_bytes(b"x" + b"w" * 999)  # same size, changed after the check: read again, refused
    with pytest.raises(GptDsError, match="weights.pt: checksum differs"):
        checkpoint.find_resume(ck, str(s))


def test_wandb_logging_offline_keeps_one_run_per_run_folder(tmp_path):
    """logging.wandb writes beside metrics.jsonl with no network; a resumed job continues the same W&B run."""
    d = tmp_path / "run"
    common = ["pretrain", "tiny", *FAST, f"run.dir={d}", "train.max_steps=4", "checkpoint.every=2",
              "logging.wandb=true", "logging.tensorboard=false", "logging.peak_tflops=1"]
    gpt_ds(*common, "train.stop_at=2")
    run_id = (d / "wandb_id").read_text().strip()
    gpt_ds(*common)
    assert (d / "wandb_id").read_text().strip() == run_id
    runs = sorted((d / "wandb").glob(f"offline-run-*-{run_id}"))  # one folder per job, both of the same W&B run
    assert len(runs) == 2, sorted((d / "wandb").iterdir())
    logged = [b"".join(p.read_bytes() for p in r.glob("*.wandb")) for r in runs]  # protobuf records, values as JSON
    for row in metrics(d):
        value = repr(row["gen_loss"]).encode()
        assert (value in logged[0], value in logged[1]) == ((True, False) if row["step"] <= 2 else (False, True))


def test_wandb_without_the_package_is_refused_before_launch(tmp_path, monkeypatch):
    import importlib.util

    from gpt_ds.config import ConfigError, load_config
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="logging.wandb is true but the wandb package is not installed"):
        load_config("tiny", [*FAST, "logging.wandb=true"])


def test_generator_first_keeps_the_discriminator_out_until_its_step(tmp_path):
    """objective.disc_start_step: the generator trains alone first; the FLOPs the export reports count that."""
    from gpt_ds.config import load_config
    from gpt_ds.flops import run_flops, step_flops
    d = tmp_path / "run"
    over = [*FAST, f"run.dir={d}", "train.max_steps=4", "objective.disc_start_step=2", "logging.tensorboard=false",
            "logging.peak_tflops=1", "deepspeed.generator=ds_configs/zero0_fp32.json",
            "deepspeed.discriminator=ds_configs/zero0_fp32.json"]
    gpt_ds("pretrain", "tiny", *over)
    rows = metrics(d)
    assert ["disc_loss" in r for r in rows] == [False, False, True, True]
    assert rows[0]["loss"] == rows[0]["gen_loss"] and rows[2]["loss"] > rows[2]["gen_loss"]
    info = json.loads(gpt_ds("export", d, "--out", tmp_path / "out").stdout.strip().splitlines()[-1])
    f = step_flops(load_config("tiny", over), 300)
    assert info["train_flops"] == run_flops(load_config("tiny", over), 4, 300) == \
        2 * (f["generator"] + f["sampling"]) + 2 * f["total"]


def test_corrective_lm_and_rtd_without_specials_train_log_count_and_export(tmp_path):
    """The `tiny` demo recipe's objective switches end to end: the corrective LM's and the sequence contrastive loss are
    logged and in the total, their head and second pass count in the FLOPs, the export (encoder only) verifies
    against plain transformers."""
    from types import SimpleNamespace

    from gpt_ds.config import load_config
    from gpt_ds.flops import run_flops, step_flops
    from gpt_ds.train.trainer import Trainer
    d = tmp_path / "run"
    over = [*FAST, f"run.dir={d}", "train.max_steps=3", "objective.disc_mlm_weight=2",
            "objective.rtd_on_specials=false", "objective.disc_scl_weight=3", "logging.tensorboard=false",
            "logging.peak_tflops=1",
            "deepspeed.generator=ds_configs/zero0_fp32.json", "deepspeed.discriminator=ds_configs/zero0_fp32.json"]
    p = gpt_ds("pretrain", "tiny", *over)
    rows = metrics(d)
    assert all(r["disc_mlm_loss"] > 0 and r["disc_scl_loss"] > 0 for r in rows) and " clm " in p.stderr
    assert " scl " in p.stderr and all(0 <= r["disc_scl_acc"] <= 1 for r in rows)
    for r in rows:
        assert abs(r["loss"] - (r["gen_loss"] + 50 * r["disc_loss"] + 2 * r["disc_mlm_loss"] + 3 * r["disc_scl_loss"])) \
            < 1e-9 * r["loss"]
    info = json.loads(gpt_ds("export", d, "--out", tmp_path / "out", "--verify").stdout.strip().splitlines()[-1])
    cfg = load_config("tiny", over)
    assert info["train_flops"] == run_flops(cfg, 3, 300) == 3 * step_flops(cfg, 300)["total"]
    for off in ("objective.disc_mlm_weight=0", "objective.disc_scl_weight=0"):
        assert step_flops(cfg, 300)["total"] > step_flops(load_config("tiny", [*over, off]), 300)["total"]
    # which tokens RTD scores: every real one, or only those the generator may replace
    ids = torch.tensor([[2, 9, 8, 3, 7, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    for on, expect in ((True, [1, 1, 1, 1, 1, 1, 0]), (False, [0, 1, 1, 0, 1, 0, 0])):
        me = SimpleNamespace(cfg=load_config("tiny", [*over, f"objective.rtd_on_specials={str(on).lower()}"]),
                             special_ids=[0, 1, 2, 3, 4])
        assert Trainer.rtd_mask(me, batch).long().tolist() == [expect]


def test_a_resume_that_adds_or_removes_the_corrective_head_is_refused_by_name():
    """The head is part of what the checkpoint holds; its weight is not (a resume may change 1 -> 2)."""
    from gpt_ds.checkpoint.compat import model_differences
    from gpt_ds.config import load_config
    cfg = load_config("tiny", FAST)
    saved = cfg.to_dict()
    assert model_differences(saved, load_config("tiny", [*FAST, "objective.disc_mlm_weight=2"])) == []
    diffs = model_differences(saved, load_config("tiny", [*FAST, "objective.disc_mlm_weight=0"]))
    assert diffs == ["objective.disc_mlm_weight: 1.0 -> 0.0 (removes the discriminator's corrective LM head)"]
    del saved["objective"]["disc_mlm_weight"]  # a checkpoint from before the key: no head
    assert "adds the discriminator's corrective LM head" in model_differences(saved, cfg)[0]
