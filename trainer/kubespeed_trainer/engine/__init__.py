"""The engine: the training loop around DeepSpeed, its checkpoints, device, signals, metrics, LR schedule and objectives."""
