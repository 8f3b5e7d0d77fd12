"""The loss curve of a run as a PNG, from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path


def plot_loss(records: list[dict], png: Path, title: str) -> bool:
    """Training loss (and eval loss, where measured) against step; False when there is nothing to draw."""
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["evalLoss"]) for r in records if r.get("evalLoss") is not None]
    if not train and not evals:
        return False
    # Loaded when a run ends, not when it starts: matplotlib takes 0.6 s to import.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    return True
