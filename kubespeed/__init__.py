"""kubespeed: DeepSpeed language-model training on Kubernetes."""

__version__ = "0.1.0"
