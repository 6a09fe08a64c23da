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
