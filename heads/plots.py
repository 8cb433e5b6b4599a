"""PNG figures of a run (matplotlib, Agg backend): ROC curves per split and the learning curve."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from .metrics import labelled_rows  # noqa: E402
from .spec import TaskSpec  # noqa: E402


def plot_roc(spec: TaskSpec, targets: Dict[str, np.ndarray], probs: Dict[str, np.ndarray], path, title: str) -> bool:
    """One panel per task: binary ROC, one-vs-rest curve per class (multiclass) or the micro-averaged
    curve (multilabel). Returns False (and writes nothing) when no task has both classes present."""
    panels = []
    for t in spec.tasks:
        y, p = targets[t.name], probs[t.name]
        keep = labelled_rows(t, y)
        y, p = y[keep], p[keep]
        curves = []
        if t.kind == "binary":
            curves = [("positive", y == 1, p[:, 1])]
        elif t.kind == "multiclass":
            names = t.class_names or [str(c) for c in range(t.num_classes)]
            curves = [(names[c], y == c, p[:, c]) for c in range(t.num_classes)]
        else:
            curves = [("micro", y.ravel() == 1, p.ravel())]
        curves = [(n, yy, pp) for n, yy, pp in curves if 0 < yy.sum() < len(yy)]
        if curves:
            panels.append((t.name, curves))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels):
        for label, yy, pp in curves:
            fpr, tpr, _ = roc_curve(yy, pp)
            ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(yy, pp):.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title} - {name}")
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_learning_curve(history: List[Dict[str, float]], monitor: str, path) -> None:
    """Train/val loss (left axis) and the monitored validation metric (right axis) per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r.get("train_loss", np.nan) for r in history], "o-", label="train loss")
    ax.plot(epochs, [r.get("val_loss", np.nan) for r in history], "s-", label="val loss")
    ax.set(xlabel="epoch", ylabel="loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r.get(f"val_{monitor}", np.nan) for r in history], "^-", color="tab:green",
             label=f"val {monitor}")
    ax2.set_ylabel(f"val {monitor}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)
