"""`gpt-ds config show CONFIG [key=value ...]`: the resolved config (preset or file, then overrides, validated) as the
YAML a run writes to its config.yaml, so a user sees every default before spending cluster hours."""
from __future__ import annotations

import argparse
import sys

import yaml

from gpt_ds.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print the resolved config as YAML")
    p.add_argument("config", help="a preset name (configs/) or a YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for gpt-ds pretrain")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0
