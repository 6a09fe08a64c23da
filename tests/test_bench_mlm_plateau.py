"""bench/mlm_plateau.py's measurement (docs/results.md §8.7): the cross-entropy it reports at [MASK], at selected
positions left visible, and for the word frequencies, checked against masked LMs whose answers are known."""
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mlm_plateau", ROOT / "bench" / "mlm_plateau.py")
plateau = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plateau)

V, MASK, CLS, SEP = 50, 4, 2, 3


class FixedLM(torch.nn.Module):
    """Logits = log q everywhere (a word-frequency model), or, with copy=True, a copier: certain of the input piece
    wherever it is not [MASK]."""

    def __init__(self, log_q, copy=False):
        super().__init__()
        self.log_q, self.copy = torch.tensor(log_q, dtype=torch.float32), copy

    def forward(self, input_ids):
        logits = self.log_q.expand(*input_ids.shape, V).clone()
        if self.copy:
            shown = input_ids != MASK
            logits[shown] = torch.nn.functional.one_hot(input_ids[shown], V).float() * 1e4
        return SimpleNamespace(logits=logits)


def _setup():
    rng = np.random.default_rng(0)
    stream = rng.integers(5, V, 5000)
    counts = np.bincount(stream, minlength=V) + 0.5
    log_q = np.log(counts / counts.sum())
    evals = [plateau.windows(stream, rng, 4, 32, CLS, SEP) for _ in range(3)]
    return log_q, evals


def test_windows_select_inner_positions_only():
    log_q, evals = _setup()
    for x, sel in evals:
        assert x.shape == (4, 32) and (x[:, 0] == CLS).all() and (x[:, -1] == SEP).all()
        assert not sel[:, 0].any() and not sel[:, -1].any() and sel.any()


def test_windows_select_the_asked_share():
    rng, stream = np.random.default_rng(1), np.arange(5, V).repeat(200)
    shares = [plateau.windows(stream, rng, 64, 66, CLS, SEP, mask_prob=p)[1][:, 1:-1].float().mean().item()
              for p in (0.15, 0.3)]
    assert abs(shares[0] - 0.15) < 0.03 and abs(shares[1] - 0.3) < 0.03  # 4096 draws each: ~4 sigma


def test_word_frequency_model_scores_the_unigram_cross_entropy():
    log_q, evals = _setup()
    ce = plateau.cross_entropies(FixedLM(log_q), evals, MASK, log_q, visible_frac=1 / 7)
    assert math.isclose(ce["mask"], ce["unigram"], rel_tol=1e-5)
    assert math.isclose(ce["visible"], ce["unigram"], rel_tol=0.05)  # the visible group: other pieces, same model
    # the unigram figure is counted over exactly the masked positions, by hand here
    vis_rng, total, n = np.random.default_rng(7), 0.0, 0
    for x, sel in evals:
        shown_mask = sel & ~torch.from_numpy(vis_rng.random(x.shape) < 1 / 7)
        total += -log_q[x[shown_mask].numpy()].sum()
        n += int(shown_mask.sum())
    assert math.isclose(ce["unigram"], total / n, rel_tol=1e-12)


def test_a_copier_is_near_zero_where_visible_and_at_word_frequencies_at_mask():
    log_q, evals = _setup()
    ce = plateau.cross_entropies(FixedLM(log_q, copy=True), evals, MASK, log_q, visible_frac=1 / 7)
    assert ce["visible"] < 1e-3 and math.isclose(ce["mask"], ce["unigram"], rel_tol=1e-5)
    none = plateau.cross_entropies(FixedLM(log_q, copy=True), evals, MASK, log_q, visible_frac=0.0)
    assert "visible" not in none  # nothing left visible: no group to report


def test_mpnet_arch_gets_explicit_positions_so_unk_is_not_padding():
    """MPNet counts positions past pad id 1; gpt_ds's tokenizers put [UNK] there, so the bench passes positions."""
    from types import SimpleNamespace as NS
    m = NS(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=16,
           embedding_size=16)
    torch.manual_seed(0)
    model = plateau.build_mlm("mpnet", m, V, 0, local_bias=True).eval()
    seen = []
    pos_emb = model.model.mpnet.embeddings.position_embeddings
    pos_emb.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    with torch.no_grad():
        model(torch.tensor([[CLS, 7, 1, 9, SEP]]))  # id 1 ([UNK]) in the middle
        model.model(input_ids=torch.tensor([[CLS, 7, 1, 9, SEP]]))  # MPNet's own rule, for contrast
    assert seen[0].tolist() == [[2, 3, 4, 5, 6]]
    assert seen[1].tolist() != seen[0].tolist()  # its rule would treat [UNK] as padding
    assert model.first == 2 and pos_emb.num_embeddings == 18
    assert plateau.build_mlm("electra", m, V, 0, local_bias=False).config.model_type == "electra"
