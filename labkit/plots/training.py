"""Training figures: notebook 04's CIFAR-10 loss, accuracy and throughput; a plain loss curve per rank (06)."""

from __future__ import annotations

from collections.abc import Sequence

from labkit.plots import figure, label_bars, log_y


def training_curves_figure(records: Sequence[dict], title: str = ""):
    """Three panels: training loss per logged step (epoch boundaries dotted), train/test accuracy per epoch, and
    images/s per epoch (the first epoch carries warm-up). The data kind ("synthetic" or "CIFAR-10") is in the title."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    kind = next((r.get("data") for r in records if r.get("data")), "")
    title = title or f"CIFAR-10 training through DeepSpeed — {kind} data"
    alt = f"{title}: loss over {len(steps)} logged steps, accuracy and images/s over {len(epochs)} epoch(s)"
    fig = figure(13, 3.6, alt)
    loss_ax, acc_ax, rate_ax = fig.subplots(1, 3)

    loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], marker=".", color="#1f77b4")
    for e in epochs:
        loss_ax.axvline(e["step"], color="#999999", linestyle=":", linewidth=0.8)
    loss_ax.set(xlabel="optimizer step", ylabel="training loss (cross-entropy)", title="loss")
    if steps and min(r["loss"] for r in steps) > 0:
        log_y(loss_ax)

    numbers = [e["epoch"] for e in epochs]
    acc_ax.plot(numbers, [e["train_acc"] for e in epochs], marker="o", label="train (augmented)")
    acc_ax.plot(numbers, [e["test_acc"] for e in epochs], marker="s", label="test")
    acc_ax.axhline(0.1, color="#c62828", linestyle="--", linewidth=0.8, label="chance (10%)")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(loc="lower right", fontsize="small")

    rates = [e["images_per_s"] for e in epochs]
    bars = rate_ax.bar(numbers, rates, color=["#bbbbbb"] + ["#2e7d32"] * (len(rates) - 1))
    label_bars(rate_ax, bars, [f"{r:,.0f}" for r in rates])
    rate_ax.set(xlabel="epoch (grey: includes warm-up)", ylabel="training images / s", title="throughput")
    rate_ax.xaxis.get_major_locator().set_params(integer=True)

    fig.suptitle(title)
    return fig


def loss_figure(curves: dict[str, Sequence[float]], title: str = ""):
    """Training loss per step, one line per named curve (e.g. per rank), on a log scale."""
    fig = figure(6.5, 3.4, f"{title}: training loss per step for {', '.join(curves)}")
    ax = fig.subplots()
    for name, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, marker=".", label=name)
    ax.set(xlabel="optimizer step", ylabel="training loss (cross-entropy)", title=title)
    if all(v > 0 for losses in curves.values() for v in losses):
        log_y(ax)
    ax.legend(fontsize="small")
    return fig
