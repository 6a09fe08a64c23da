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
