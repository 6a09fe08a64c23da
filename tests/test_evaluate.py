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


def test_hidden_geometry_tells_a_one_direction_top_layer_from_a_random_one():
    from transformers import ElectraConfig, ElectraModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from gpt_ds.evaluate import hidden_geometry
    words = [f"w{i}" for i in range(200)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[j] for j in torch.randint(0, 200, (12,), generator=g).tolist()) for _ in range(64)]
    torch.manual_seed(0)
    model = ElectraModel(ElectraConfig(vocab_size=202, embedding_size=32, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64))
    layers = hidden_geometry(model, tokenizer, texts)
    assert len(layers) == 3 and all(x["tokens"]["top1_share"] < 0.3 for x in layers)
    assert layers[-1]["tokens"]["effective_dims"] > 15
    with torch.no_grad():  # the top layer's LayerNorm keeps one dimension: everything varies along it alone
        ln = model.encoder.layer[-1].output.LayerNorm
        ln.weight.zero_()
        ln.weight[3] = 1.0
    top = hidden_geometry(model, tokenizer, texts)[-1]
    assert top["tokens"]["top1_share"] > 0.99 and top["tokens"]["effective_dims"] < 1.1


def _masked_lm_folder(out, zero_positions: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import ElectraConfig, ElectraForMaskedLM, PreTrainedTokenizerFast
    words = [f"w{i}" for i in range(40)]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                               ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(0)
    model = ElectraForMaskedLM(ElectraConfig(vocab_size=len(vocab), embedding_size=32, hidden_size=32,
                                             num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                             max_position_embeddings=64, initializer_range=0.5))
    if zero_positions:  # no position signal: self-attention is then permutation-equivariant, a bag of words
        with torch.no_grad():
            model.electra.embeddings.position_embeddings.weight.zero_()
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out, words


def test_order_sensitivity_tells_a_bag_of_words_model_from_one_that_reads_positions(tmp_path):
    from gpt_ds.evaluate import order_sensitivity
    bag, words = _masked_lm_folder(tmp_path / "bag", zero_positions=True)
    ordered, _ = _masked_lm_folder(tmp_path / "ordered", zero_positions=False)
    import random
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(8)]
    b = order_sensitivity(bag, texts)
    o = order_sensitivity(ordered, texts)
    assert b["masked_tokens"] == o["masked_tokens"] == 80
    assert b["kl_shuffled"] < 1e-9 and b["accuracy"] == b["accuracy_shuffled"]
    assert o["kl_shuffled"] > 1e-3


def test_a_masked_lm_that_only_knows_word_frequencies_scores_the_unigram_cross_entropy(tmp_path):
    """The fill-mask diagnostic of `make demo`: a model whose every output is log q(word) (q counted here, on the fit
    texts, with plain Python) must score exactly the unigram cross-entropy the function computes at the same masked
    positions, and the same with its context shuffled; a model that reads its input must not."""
    import collections
    import math
    import random

    from transformers import AutoConfig, ElectraForMaskedLM

    from gpt_ds.evaluate import order_sensitivity
    folder, words = _masked_lm_folder(tmp_path / "unigram", zero_positions=False)
    rng = random.Random(1)
    fit = [" ".join(rng.choices(words, weights=range(1, 41), k=25)) for _ in range(20)]  # skewed frequencies
    held = [" ".join(rng.choices(words, weights=range(1, 41), k=30)) for _ in range(8)]
    config = AutoConfig.from_pretrained(folder)
    config.tie_word_embeddings = False  # its own output matrix, zeroed: the logits are the bias alone
    model = ElectraForMaskedLM(config)
    vocab = config.vocab_size
    counts = collections.Counter(w for text in fit for w in text.split())
    total = sum(counts.values()) + 0.5 * vocab
    log_q = torch.tensor([math.log((counts.get(f"w{i - 5}", 0) if i >= 5 else 0) + 0.5) - math.log(total)
                          for i in range(vocab)])
    with torch.no_grad():
        model.generator_lm_head.weight.zero_()
        model.generator_lm_head.bias.copy_(log_q)
    model.save_pretrained(tmp_path / "unigram_only")
    import shutil
    for f in folder.glob("*token*"):
        shutil.copy(f, tmp_path / "unigram_only" / f.name)
    u = order_sensitivity(tmp_path / "unigram_only", held, fit_texts=fit)
    assert u["masked_tokens"] == 80
    assert u["cross_entropy"] == pytest.approx(u["unigram_cross_entropy"], abs=1e-5)
    assert u["cross_entropy_shuffled"] == pytest.approx(u["cross_entropy"], abs=1e-5)
    assert u["unigram_cross_entropy"] < math.log(40) - 0.05  # skewed: below the uniform 40-word entropy
    reads = order_sensitivity(folder, held, fit_texts=fit)  # a random init with large weights: far from q
    assert reads["unigram_cross_entropy"] == pytest.approx(u["unigram_cross_entropy"])
    assert abs(reads["cross_entropy"] - reads["unigram_cross_entropy"]) > 0.1
