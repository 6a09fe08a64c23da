"""The pretraining text the demo and bench/electra_vs_mlm.py build from installed packages: what it holds, that it is
written once, and that no labeled sentence the fine-tuning tasks score on is in it."""
import re

from demo.corpora import LABELED_TASKS, conversational_text


def test_conversational_text_is_clean_grouped_and_written_once(tmp_path):
    files = conversational_text(tmp_path)
    kinds = {f.name.split("-")[0] for f in files}
    assert kinds == {"dialog", "tweets", "speeches"}
    docs = {k: [d for f in files if f.name.startswith(k) for d in f.read_text(encoding="utf-8").split("\n\n")
                if d.strip()] for k in kinds}
    assert len(docs["speeches"]) >= 900  # 1,000 speeches, empty ones left out
    assert all(len(d.splitlines()) <= 40 for d in docs["dialog"] + docs["tweets"])
    assert len(docs["dialog"]) * 40 >= 100_000  # 64,350 statement/reply pairs, both sides kept
    tweets = "\n".join(docs["tweets"])
    assert not re.search(r"https?://", tweets) and "&amp;" not in tweets and "&gt;" not in tweets
    # idempotent: a second call finds every file as it wrote it and rewrites none
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert conversational_text(tmp_path) == files
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_no_labeled_sentence_is_pretraining_text(tmp_path):
    """Pretraining on a task's own sentences would credit pretraining with what is really the test set."""
    lines = {line.strip().lower() for f in conversational_text(tmp_path)
             for line in f.read_text(encoding="utf-8").splitlines()}
    for task, rows in LABELED_TASKS.items():
        leaked = [t for t, _ in rows() if len(t) >= 30 and t.strip().lower() in lines]
        assert not leaked, (task, leaked[:3])
