"""The command table's own options: --version, and `config show` printing the resolved config a run would use."""
import yaml

from test_train import gpt_ds


def test_version_names_gpt_ds_and_its_core_packages():
    import gpt_ds as package
    out = gpt_ds("--version").stdout
    assert out.startswith(f"gpt-ds {package.__version__} (") and "torch " in out and "deepspeed " in out


def test_config_show_prints_the_resolved_config_with_overrides():
    cfg = yaml.safe_load(gpt_ds("config", "show", "tiny", "optim.lr=2e-3", "train.max_steps=7").stdout)
    assert cfg["optim"]["lr"] == 2e-3 and cfg["train"]["max_steps"] == 7
    assert cfg["model"]["hidden_size"] == 128 and cfg["model"]["tie_output_embeddings"] is False  # the preset's
    assert cfg["optim"]["beta2"] == 0.999  # a default the preset leaves alone
    bad = gpt_ds("config", "show", "tiny", "optim.lrr=2", check=False)
    assert bad.returncode == 2 and "did you mean 'optim.lr'" in bad.stderr and "Traceback" not in bad.stderr


def test_plot_draws_one_or_more_runs_and_names_a_folder_without_metrics(tmp_path):
    import json
    for name, slope in (("a", 1.0), ("b", 2.0)):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "loss": 30 - slope * s / 10, "gen_loss": 7 - s / 100, "gen_acc": s / 1000,
                 "disc_loss": 0.4 - s / 1000, "disc_loss_prior": 0.42, "disc_auc": 0.5 + s / 500,
                 "tokens_per_s": 5000} for s in range(10, 110, 10)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curves.png"
    p = gpt_ds("plot", tmp_path / "a", tmp_path / "b", "--out", out)
    assert p.stdout.strip() == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    from gpt_ds.config import dump_config, load_config
    dump_config(load_config("tiny", ["train.global_batch=16", "data.seq_len=64", "model.vocab_size=1000"]),
                tmp_path / "a" / "config.yaml")
    p = gpt_ds("plot", tmp_path / "a", "--x", "tokens", "--out", tmp_path / "tokens.png")
    assert (tmp_path / "tokens.png").stat().st_size > 10_000
    p = gpt_ds("plot", tmp_path / "b", "--x", "flops", check=False)  # b has no config.yaml to count FLOPs from
    assert p.returncode == 2 and "no config.yaml" in p.stderr
    (tmp_path / "empty").mkdir()
    p = gpt_ds("plot", tmp_path / "empty", check=False)
    assert p.returncode == 2 and "no metrics.jsonl" in p.stderr and "Traceback" not in p.stderr
