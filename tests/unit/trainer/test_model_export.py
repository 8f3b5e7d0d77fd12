"""Export: safetensors + config.json that Hugging Face loads with the same logits, and the way back in."""

from __future__ import annotations

import json

import pytest
import torch

from kubespeed.spec.job import ModelSpec
from kubespeed_trainer.models import build_model, export_hf, load_exported, load_weights

VOCAB, SEQ = 61, 24
TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": SEQ}
SPECS = {
    "gpt tied": ModelSpec(type="gpt", size="tiny"),
    "gpt untied": ModelSpec(type="gpt", size="tiny", tieWeights=False, layers=3, heads=4),
    "hf llama": ModelSpec(type="hf", hfConfig=TINY_LLAMA),
    "lstm tied": ModelSpec(type="lstm", size="tiny"),
    "lstm untied with projection-free head": ModelSpec(type="lstm", size="tiny", tieWeights=False, hiddenDim=40),
    "lstm tied with projection": ModelSpec(type="lstm", size="tiny", hiddenDim=40),
}
HF_LOADABLE = ["gpt tied", "gpt untied", "hf llama"]
TOKENS = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


def trained(name: str) -> torch.nn.Module:
    """A model whose weights are not at their initial values, so biases and norms are exercised too."""
    torch.manual_seed(0)
    model = build_model(SPECS[name], vocab_size=VOCAB, seq_length=SEQ)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name", HF_LOADABLE)
def test_from_pretrained_gives_the_same_logits(name, tmp_path):
    from transformers import AutoModelForCausalLM

    model = trained(name)
    export_hf(model, SPECS[name], VOCAB, SEQ, tmp_path, eos_id=VOCAB - 1)
    assert {"config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS).logits, model(TOKENS), atol=1e-5, rtol=1e-5)


def test_gpt_exports_as_a_gpt2_config_with_our_eos(tmp_path):
    export_hf(trained("gpt tied"), SPECS["gpt tied"], VOCAB, SEQ, tmp_path, eos_id=VOCAB - 1)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["n_positions"], config["vocab_size"]) == ("gpt2", SEQ, VOCAB)
    assert config["eos_token_id"] == config["bos_token_id"] == VOCAB - 1


@pytest.mark.parametrize("name", SPECS)
def test_load_exported_gives_the_same_logits(name, tmp_path):
    model = trained(name)
    export_hf(model, SPECS[name], VOCAB, SEQ, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path)(TOKENS), model(TOKENS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SPECS)
def test_load_weights_fills_a_freshly_built_model(name, tmp_path):
    model = trained(name)
    export_hf(model, SPECS[name], VOCAB, SEQ, tmp_path)
    torch.manual_seed(1)
    fresh = load_weights(build_model(SPECS[name], vocab_size=VOCAB, seq_length=SEQ), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(TOKENS), model(TOKENS))


def test_export_takes_a_gathered_state_dict_instead_of_the_models_weights(tmp_path):
    model, other = trained("gpt tied"), build_model(SPECS["gpt tied"], vocab_size=VOCAB, seq_length=SEQ)
    export_hf(other, SPECS["gpt tied"], VOCAB, SEQ, tmp_path, state_dict=model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path)(TOKENS), model(TOKENS))


@pytest.mark.parametrize(
    "other",
    [ModelSpec(type="gpt", size="tiny", layers=3), ModelSpec(type="gpt", size="tiny", embedDim=32),
     ModelSpec(type="lstm", size="tiny")],
    ids=["deeper", "narrower", "another family"],
)
def test_weights_that_do_not_fit_are_refused(tmp_path, other):
    export_hf(trained("gpt tied"), SPECS["gpt tied"], VOCAB, SEQ, tmp_path)
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(build_model(other, vocab_size=VOCAB, seq_length=SEQ), tmp_path)
