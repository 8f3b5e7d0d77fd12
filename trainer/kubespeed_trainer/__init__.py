"""The kubespeed trainer: DeepSpeed language-model training, from the pod's launcher down to the model.

    commands/   the `kubespeed` commands it owns: train, launch, export, prepare, sample
    engine/     the training loop around DeepSpeed: build, checkpoints, device, signals, metrics, LR schedule, objectives
    models/     the built-in GPT, the LSTM LM, any Hugging Face causal LM; export to safetensors
    data/       sources, tokenizers, token shards, packed samples, the resumable sampler
    parallel/   the built-in GPT as DeepSpeed pipeline stages
    config.py   reading a trainer config file
"""
