"""The kubespeed trainer: models, tokenizers, data, objectives and the DeepSpeed engine that trains them."""
