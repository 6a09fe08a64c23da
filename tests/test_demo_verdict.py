"""The demo's downstream verdict: a gap inside the fine-tuning seeds' spread is reported as level."""
from demo.__main__ import verdict


def _ft(pre: list[float], rnd: list[float]) -> dict:
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"train_rows": 500,
            "pretrained": {"test_accuracy": med(pre), "seeds": pre},
            "random_init": {"test_accuracy": med(rnd), "seeds": rnd}}


def test_separated_ranges_are_a_win_or_a_loss():
    win = verdict(_ft([0.66, 0.70, 0.68], [0.58, 0.60, 0.59]))
    assert "discriminator beats its random-init twin" in win and "+9.0 points" in win and "(seeds 66.0-70.0)" in win
    loss = verdict(_ft([0.50, 0.52, 0.51], [0.58, 0.60, 0.59]))
    assert "is below" in loss and "-8.0 points" in loss


def test_overlapping_ranges_are_level_whatever_the_median_says():
    line = verdict(_ft([0.571, 0.633, 0.575], [0.551, 0.607, 0.586]))
    assert "is level with" in line and "beats" not in line and "-1.1 points" in line
    assert verdict(_ft([0.60, 0.64, 0.62], [0.55, 0.61, 0.58])).count("level") == 1  # +4 median, ranges overlap


def test_the_fill_mask_blank_is_a_word_one_piece_can_fill(tmp_path):
    """The demo's example blanks the longest inner word its tokenizer keeps whole; a long word of several pieces is
    passed over (one [MASK] cannot stand for it), and a sentence without such a word gets no blank."""
    from transformers import AutoTokenizer

    from demo.__main__ import blank_word
    from demo.corpora import news_articles
    from gpt_ds.data.tokenizer import train_tokenizer
    tok = AutoTokenizer.from_pretrained(train_tokenizer(news_articles(tmp_path / "c", per_file=100, limit=200), 1000,
                                                        tmp_path / "tok"))
    pieces = lambda w: len(tok(w, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert pieces("extraordinarily") > 1 and pieces("unexpected") > 1 and pieces("government") == 1
    words = "The government said the extraordinarily unexpected result was good".split()
    assert words[blank_word(words, tok)] == "government"  # the longest word left once the split ones are passed over
    assert blank_word("The extraordinarily unexpected end".split(), tok) is None
