"""`gpt-ds <subcommand>`: a thin dispatcher; each subcommand lives next to the stage it drives."""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

import gpt_ds
from gpt_ds.errors import GptDsError

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS = {
    "pretrain": ("gpt_ds.train.launch", "pretrain a generator + discriminator (or an MLM baseline)"),
    "export": ("gpt_ds.export", "consolidate a checkpoint into Hugging Face discriminator/ and generator/ folders"),
    "finetune": ("gpt_ds.finetune.run", "fine-tune an exported encoder for text classification (accelerate), with "
                                        "a random-init control"),
    "tokenizer": ("gpt_ds.data.tokenizer", "train a SentencePiece tokenizer saved as a Hugging Face tokenizer dir"),
    "prepare": ("gpt_ds.data.store.prepare", "tokenize a corpus into a sharded memory-mapped token store"),
    "inspect": ("gpt_ds.data.store.inspect", "print a token store's manifest totals as JSON"),
    "index": ("gpt_ds.data.store.index", "build the fixed-length sample index of a store for a sequence length"),
    "check": ("gpt_ds.zero.check", "validate a config and its ds_configs before launch"),
    "estimate": ("gpt_ds.zero.estimate", "estimate per-GPU memory and step time for a config"),
    "config": ("gpt_ds.config_cmd", "print the resolved config (preset or file + overrides) as YAML"),
    "plot": ("gpt_ds.plot", "draw the loss, accuracy, AUC and throughput curves of one or more runs (PNG)"),
}


def _version() -> str:
    parts = []
    for package in ("torch", "deepspeed", "transformers", "accelerate"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return f"gpt-ds {gpt_ds.__version__} ({', '.join(parts)})"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gpt-ds <command> [options]   (gpt-ds --version)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(_version())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"gpt-ds: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"gpt-ds {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_intermixed_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except GptDsError as e:
        if not getattr(e, "quiet", False):  # quiet: rank 0 reports this same problem for the whole job
            print(f"gpt-ds {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT, no traceback from wherever it landed
        print(f"gpt-ds {name}: interrupted", file=sys.stderr)
        return 128 + 2


if __name__ == "__main__":
    sys.exit(main())
