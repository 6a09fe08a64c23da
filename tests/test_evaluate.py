"""gpt_ds.evaluate: the token-identity baseline and the embedding geometry, on cases with known answers."""
import pytest
import torch

from gpt_ds.evaluate import auc, embedding_geometry, token_identity_scores


def test_auc_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(200, generator=g)
    y = torch.rand(200, generator=g) < 0.3
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).double().mean()).item()
    assert auc(s, y) == pytest.approx(pairwise)


def test_token_identity_scores_rank_tokens_by_how_often_they_were_replacements():
    ids = torch.tensor([5, 6, 7, 5, 6, 7, 5, 6])
    y = torch.tensor([1, 0, 0, 1, 0, 1, 1, 0], dtype=torch.bool)  # 5: always replaced, 6: never, 7: half
    s = token_identity_scores([(ids, y)], vocab_size=10)
    assert s[5] > s[7] > s[6]
    assert s[7].item() == pytest.approx(0.0)  # (1 + 1) / (1 + 1)
    assert auc(s[ids], y) > 0.9


def test_embedding_geometry_tells_a_collapsed_table_from_a_random_one():
    from transformers import ElectraConfig, ElectraModel
    torch.manual_seed(0)
    model = ElectraModel(ElectraConfig(vocab_size=3000, embedding_size=64, hidden_size=64, num_hidden_layers=1,
                                       num_attention_heads=1, intermediate_size=64))
    random = embedding_geometry(model)
    assert random["top1_share"] < 0.05 and abs(random["mean_cos"]) < 0.02
    with torch.no_grad():  # what the tied softmax does: one shared direction, scaled per token, in every row
        w = model.embeddings.word_embeddings.weight
        w += torch.linspace(0.5, 2.0, w.shape[0])[:, None] * torch.randn(1, w.shape[1])
    collapsed = embedding_geometry(model)
    assert collapsed["top1_share"] > 0.9 and collapsed["mean_cos"] > 0.9
