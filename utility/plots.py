"""curves.png: validation Recall@20 / NDCG@20 and the training loss terms of both stages."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

STAGE_COLOURS = {"teacher": "tab:blue", "student": "tab:orange"}


def plot_curves(histories, best_epochs, path, title=""):
    """histories: {stage: [per-epoch record]}; best_epochs: {stage: epoch}. Writes a PNG to ``path``."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes[:2], ("recall@20", "ndcg@20")):
        for stage, history in histories.items():
            points = [(r["epoch"], r["val"][metric]) for r in history if "val" in r]
            if not points:
                continue
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker=".", color=STAGE_COLOURS.get(stage), label=stage)
            best = best_epochs.get(stage)
            if best in epochs:
                y = values[epochs.index(best)]
                ax.scatter([best], [y], s=120, marker="*", color=STAGE_COLOURS.get(stage), zorder=3,
                           edgecolor="black", label=f"{stage} best (epoch {best}: {y:.4f})")
        ax.set_title(f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for stage, history in histories.items():
        if not history:
            continue
        style = "-" if stage == "teacher" else "--"
        for name in history[0]["terms"]:
            ax.plot([r["epoch"] for r in history], [r["terms"][name] for r in history], style,
                    label=f"{stage} {name}")
    ax.set_yscale("log")
    ax.set_title("training loss terms (weighted)")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
