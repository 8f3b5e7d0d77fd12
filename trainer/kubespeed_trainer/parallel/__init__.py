"""Parallelism the model does not know about: the built-in GPT laid out as DeepSpeed pipeline stages, and read back."""
