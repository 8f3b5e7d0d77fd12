"""Models: logits of the right shape, a tiny overfit that learns, named GPT sizes and their parameter counts."""

from __future__ import annotations

import pytest
import torch

from kubespeed.spec.job import ModelSpec
from kubespeed_trainer.models import build_model, count_parameters, estimate_flops_per_token, gpt
from kubespeed_trainer.engine.objectives import loss

VOCAB, SEQ = 50, 32
TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": SEQ}
SPECS = {
    "gpt": ModelSpec(type="gpt", size="tiny"),
    "gpt untied": ModelSpec(type="gpt", size="tiny", tieWeights=False, layers=1),
    "lstm": ModelSpec(type="lstm", size="tiny"),
    "lstm hidden wider than embedding": ModelSpec(type="lstm", size="tiny", embedDim=32, hiddenDim=48),
    "hf llama": ModelSpec(type="hf", hfConfig=TINY_LLAMA),
}


def built(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SPECS[name], vocab_size=VOCAB, seq_length=SEQ)


@pytest.mark.parametrize("name", SPECS)
def test_forward_maps_token_ids_to_logits(name):
    logits = built(name)(torch.randint(0, VOCAB, (3, SEQ)))
    assert logits.shape == (3, SEQ, VOCAB)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("name", SPECS)
def test_loss_falls_when_overfitting_one_batch(name):
    model = built(name)
    tokens = torch.randint(0, VOCAB, (4, SEQ + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets, mask = tokens[:, :-1], tokens[:, 1:], torch.ones(4, SEQ)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    losses = []
    for _ in range(30):
        value = loss(model(inputs), targets, mask)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("name", ["gpt", "hf llama"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    grads = []
    for enabled in (False, True):
        model = built(name).train()
        model.gradient_checkpointing(enabled)
        model(tokens).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_gpt_is_causal():
    model = built("gpt").eval()
    tokens = torch.randint(0, VOCAB, (1, SEQ))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    torch.testing.assert_close(model(tokens)[:, :-1], model(changed)[:, :-1])


def test_gpt_exposes_the_pieces_the_engine_lays_out():
    model = built("gpt")
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 2
    assert model.head.weight is model.tok_emb.weight
    assert model.pos_emb.num_embeddings == SEQ
    assert all(hasattr(model, name) for name in ("tok_emb", "pos_emb", "ln_f"))


def test_hf_config_vocabulary_follows_the_tokenizer():
    model = built("hf llama")
    assert model.model.config.vocab_size == VOCAB


@pytest.mark.parametrize(
    "size, layers, heads, dim, non_embedding_millions",
    [("tiny", 2, 2, 64, 0.1), ("mini", 4, 4, 128, 0.79), ("small", 6, 6, 384, 10.6), ("gpt-125m", 12, 12, 768, 85.1),
     ("gpt-350m", 24, 16, 1024, 302.3), ("gpt-760m", 24, 16, 1536, 680.0), ("gpt-1b", 24, 16, 2048, 1208.6)],
)
def test_named_gpt_sizes(size, layers, heads, dim, non_embedding_millions):
    config = gpt.config_for(size, vocab_size=50304, block_size=1024)
    assert (config.layers, config.heads, config.embed_dim) == (layers, heads, dim)
    assert gpt.non_embedding_parameters(config) / 1e6 == pytest.approx(non_embedding_millions, abs=0.1)


@pytest.mark.parametrize("size", ["tiny", "mini"])
def test_parameter_formula_matches_a_built_model(size):
    model = build_model(ModelSpec(type="gpt", size=size), vocab_size=VOCAB, seq_length=SEQ)
    config = model.config
    assert count_parameters(model) == gpt.non_embedding_parameters(config) + (VOCAB + SEQ) * config.embed_dim


def test_flops_per_token_is_six_n_plus_attention():
    spec = ModelSpec(type="gpt", size="tiny")
    model = build_model(spec, vocab_size=VOCAB, seq_length=SEQ)
    n = count_parameters(model) - SEQ * 64  # position embeddings are a lookup
    assert estimate_flops_per_token(model, spec, vocab_size=VOCAB, seq_length=SEQ) == 6 * n + 12 * 2 * 64 * SEQ


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="multiple of heads"):
        build_model(ModelSpec(type="gpt", size="tiny", heads=3), vocab_size=VOCAB, seq_length=SEQ)


@pytest.mark.parametrize("tokenizer_vocab, expected_rows", [(VOCAB, VOCAB), (VOCAB + 14, VOCAB + 14), (VOCAB - 10, VOCAB)],
                         ids=["same vocabulary", "tokenizer has more ids: grows", "tokenizer has fewer ids: never shrinks"])
def test_hf_model_from_a_local_directory(tmp_path, tokenizer_vocab, expected_rows):
    saved = built("hf llama").eval()
    saved.model.save_pretrained(tmp_path)
    loaded = build_model(ModelSpec(type="hf", path=str(tmp_path)), vocab_size=tokenizer_vocab, seq_length=SEQ).eval()
    assert loaded.model.get_input_embeddings().num_embeddings == expected_rows
    tokens = torch.randint(0, min(VOCAB, tokenizer_vocab), (1, SEQ))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens)[..., :VOCAB], saved(tokens))


def test_gelu_written_for_the_compiler_is_the_same_function_as_torchs(monkeypatch):
    x = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64, requires_grad=True)
    eager = gpt.gelu_tanh(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    compiled_form = gpt.gelu_tanh(x)
    torch.testing.assert_close(compiled_form, eager, rtol=1e-12, atol=1e-12)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    (compiled_grad,) = torch.autograd.grad(compiled_form.sum(), x)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-10, atol=1e-10)
