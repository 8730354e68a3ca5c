"""The figures fergate writes, each saved as a PNG that reads on its own: a title, labelled
axes, and colour bars that say what they measure. Model families draw their reports with
these; matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str, path: str) -> str:
    """Row-normalised confusion matrix (scikit-learn's display). Up to 20 classes each cell
    shows its percentage; beyond, the colours alone, with small tick labels, so that 50
    compound classes stay readable."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt, k = _plt(), len(classes)
    side = 1.5 + (0.55 if k <= 20 else 0.24) * k
    # constrained layout keeps the colour bar's label and the title (above both) apart
    fig, ax = plt.subplots(figsize=(max(side + 1.5, 5.5), side + 0.4), layout="constrained")
    disp = ConfusionMatrixDisplay.from_predictions(
        labels, pred, labels=list(range(k)), display_labels=list(classes), normalize="true", ax=ax, cmap="Blues",
        include_values=k <= 20, values_format=".0%", xticks_rotation=90 if k > 8 else 45, colorbar=False,
        im_kw={"vmin": 0, "vmax": 1})
    if k <= 20:
        for t in disp.text_.ravel():
            t.set_fontsize(8)
    else:
        ax.tick_params(labelsize=5)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(disp.im_, ax=ax, shrink=0.8).set_label("fraction of the true class's examples")
    fig.suptitle(_wrap(title, fig), fontsize=10)
    return _save(fig, path)


def _wrap(title: str, fig, fontsize: float = 10) -> str:
    """`title`'s lines wrapped to the figure's width (a long run name must not run off it)."""
    import textwrap

    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))  # a character: ~0.55 em
    return "\n".join(textwrap.fill(line, chars) for line in title.splitlines())


def class_table(values: dict[str, np.ndarray], columns: Sequence[str], title: str, path: str,
                colorbar_label: str, vmin: float = 0.0, vmax: float = 1.0, xlabel: str = "") -> str:
    """A class x column table of mean values (e.g. the modal gate per class), the numbers
    written in the cells up to 10 columns."""
    plt = _plt()
    rows = list(values)
    vals = np.array([values[r] for r in rows])
    numbers = vals.shape[1] <= 10
    fig, ax = plt.subplots(figsize=(2.5 + (1.1 if numbers else 0.3) * vals.shape[1], 0.8 + 0.4 * len(rows)))
    im = ax.imshow(vals, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1] if numbers else 0):
            ax.text(j, i, f"{vals[i, j]:.3f}", ha="center", va="center",
                    color="white" if vals[i, j] < (vmin + vmax) / 2 else "black", fontsize=8)
    ax.set_xticks(range(vals.shape[1]), columns, rotation=0 if numbers else 90, fontsize=None if numbers else 7)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax).set_label(colorbar_label)
    return _save(fig, path)


def values_on_faces(values: dict[str, np.ndarray], faces: dict[str, np.ndarray], points: dict[str, np.ndarray],
                    title: str, path: str, colorbar_label: str, vmin: float, vmax: float) -> str:
    """One panel per class: its mean face, with a value per point drawn as a coloured dot on
    the class's mean landmarks (e.g. landmark gates)."""

    def draw(ax, c, v):
        face = faces[c]
        ax.imshow(face[..., 0] if face.shape[-1] == 1 else face / 255.0, cmap="gray", vmin=0, vmax=255)
        return ax.scatter(points[c][:, 0], points[c][:, 1], c=v, cmap="jet", vmin=vmin, vmax=vmax, s=12)

    return _class_panels(values, draw, (2, 3.0), title, path, colorbar_label)


def maps_on_images(images: dict[str, np.ndarray], title: str, path: str, colorbar_label: str) -> str:
    """One panel per class of an (H, W) map over the input (e.g. mean face x attention), on
    one colour scale."""
    vmax = max(float(v.max()) for v in images.values())
    return _class_panels(images, lambda ax, c, v: ax.imshow(v, cmap="inferno", vmin=0, vmax=vmax), (1.9, 3.2),
                         title, path, colorbar_label)


def _class_panels(values: dict, draw: Callable, size: tuple[float, float], title: str, path: str,
                  colorbar_label: str) -> str:
    """A row of panels, one per class (`size`: each one's width, and the height), each drawn
    by `draw(ax, class, value)`, which returns what the shared colour bar below them shows;
    the title above."""
    plt = _plt()
    cols = len(values)
    fig, axes = plt.subplots(1, cols, figsize=(size[0] * cols, size[1]), squeeze=False, layout="compressed")
    shown = None
    for ax, (c, v) in zip(axes[0], values.items()):
        shown = draw(ax, c, v)
        ax.set_title(c, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[0].tolist(), orientation="horizontal", fraction=0.08, aspect=60,
                 shrink=0.8).set_label(colorbar_label)
    fig.suptitle(title, fontsize=10, y=1.06)  # above the panel titles (the saved figure grows to hold it)
    return _save(fig, path)


def overlay(image: np.ndarray, heat: np.ndarray, boxes: list, title: str, path: str, colorbar_label: str) -> str:
    """A photo with a per-pixel heat map over it and face boxes (left, top, right, bottom)."""
    plt = _plt()
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(min(12, 2 + w / 80), min(12, 1.2 + h / 80)))
    ax.imshow(image if image.ndim == 3 and image.shape[-1] == 3 else image.reshape(h, w), cmap="gray")
    im = ax.imshow(heat, cmap="jet", alpha=0.45)
    for left, top, right, bottom in boxes:
        ax.add_patch(plt.Rectangle((left, top), right - left, bottom - top, fill=False, color="white", lw=1.5))
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7).set_label(colorbar_label)
    return _save(fig, path)


def distributions(histograms: dict[str, dict], xlabel: str, title: str, path: str) -> str:
    """Histograms {label: {"counts", "edges", "mean"}} as one line each, normalised."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, h in histograms.items():
        edges, counts = np.array(h["edges"]), np.array(h["counts"], np.float64)
        ax.plot((edges[:-1] + edges[1:]) / 2, counts / max(counts.sum(), 1), marker=".",
                label=f"{label} (mean {h['mean']:.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of examples")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def pair_distances(reps: dict[str, dict], title: str, path: str) -> str:
    """One panel per representation: the distance distributions of same-person (red) and
    different-person (green) pairs, as THIN's Fig. 9, with their overlap (IoU) and the pair
    accuracy of the best threshold."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(reps), figsize=(4.2 * len(reps), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], reps.items()):
        for key, colour, label in (("same", "tab:red", "same person"), ("different", "tab:green", "different people")):
            edges, counts = np.array(r[key]["edges"]), np.array(r[key]["counts"], np.float64)
            ax.plot((edges[:-1] + edges[1:]) / 2, counts / max(counts.sum(), 1), color=colour, marker=".",
                    label=f"{label} (mean {r[key]['mean']:.2f})")
        ax.axvline(r["threshold"], color="grey", linestyle=":", label=f"threshold {r['threshold']:.2f}")
        ax.set_xlabel("distance of the L2-normalised representations")
        ax.set_ylabel("fraction of pairs")
        ax.set_title(f"{name}\nIoU {r['iou']:.2f}, pair accuracy {r['pair_accuracy']:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10, y=1.06)
    return _save(fig, path)


def image_grid(images: np.ndarray, row_labels: Sequence[str], title: str, path: str, xlabel: str = "") -> str:
    """images (rows, cols, H, W, C) uint8 as a grid, one labelled row each."""
    plt = _plt()
    rows, cols, h, w = images.shape[:4]
    grid = images.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, -1)
    fig, ax = plt.subplots(figsize=(0.6 * cols + 1.5, 0.6 * rows + 0.8))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
    ax.set_yticks((np.arange(rows) + 0.5) * h, row_labels, fontsize=6)
    ax.set_xticks([])
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def training_curves(runs: dict[str, list[dict]], path: str, title: str = "") -> str:
    """Loss and accuracy against the step of one run or several ({label: rows of
    metrics.jsonl}, one colour each): training (mean over each logging interval) and
    held-out evaluation (accuracy solid with markers, mean class accuracy dashed). The
    legends (the runs' colours, the lines' kinds) stand outside the axes, off the curves;
    the accuracy axis reaches a little above 1, so that points at 1.0 show whole."""
    from matplotlib.lines import Line2D

    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    kinds = {}  # the kinds of line drawn: legend label -> a grey sample of its style
    for i, rows in enumerate(runs.values()):
        colour = f"C{i}"
        train = [r for r in rows if "loss" in r]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color=colour)
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], color=colour, alpha=0.5)
        kinds["training batches"] = {"alpha": 0.5}
        for tag, name, marker in (("val", "validation", "s"), ("eval", "held-out split", "o")):
            held = [r for r in rows if f"{tag}_accuracy" in r]
            if held:
                ax_acc.plot([r["step"] for r in held], [r[f"{tag}_accuracy"] for r in held], marker=marker,
                            color=colour)
                ax_acc.plot([r["step"] for r in held], [r[f"{tag}_mean_class_accuracy"] for r in held], marker=".",
                            linestyle="--", color=colour)
                kinds[name] = {"marker": marker}
                kinds[f"{name}, mean class accuracy"] = {"marker": ".", "linestyle": "--"}
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (mean over each logging interval)")
    ax_loss.set_title("training loss", fontsize=10)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(-0.03, 1.05)
    ax_acc.set_yticks(np.linspace(0, 1, 6))
    ax_acc.set_title("accuracy", fontsize=10)
    if any(runs):  # named runs: which colour is which
        fig.legend([Line2D([], [], color=f"C{i}") for i in range(len(runs))], list(runs), loc="outside right upper",
                   fontsize=7, title="run", title_fontsize=8)
    fig.legend([Line2D([], [], color="0.3", **style) for style in kinds.values()], list(kinds),
               loc="outside right lower", fontsize=7, title="accuracy of", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def sweep_table(rows: list[dict], scale: float, title: str, xlabel: str, path: str,
                chance: float | None = None) -> str:
    """A sweep's table (`fergate sweep`): per row each seed's value (grey), their mean with
    the std as a bar, and the paper's number (red cross) on the same axis; `chance`, a
    uniform guess's value, as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(rows)))
    shown = set()

    def once(label: str) -> str | None:  # each legend entry once
        new = label not in shown
        shown.add(label)
        return label if new else None

    for y, r in enumerate(rows):
        if r["values"]:
            ax.scatter(np.array(r["values"]) * scale, [y] * len(r["values"]), color="0.6", s=14, zorder=2,
                       label=once("one seed"))
            ax.errorbar(r["mean"] * scale, y, xerr=(r["std"] or 0) * scale, fmt="o", color="C0", capsize=4,
                        zorder=3, label=once("fergate: mean ± std"))
        else:
            ax.annotate(" no result" + (f" ({len(r['failed'])} failed)" if r.get("failed") else ""), (0, y),
                        xycoords=("axes fraction", "data"), va="center", fontsize=8, color="0.4")
        if r["paper"] is not None:
            ax.scatter([r["paper"]], [y], marker="x", color="C3", s=50, zorder=4, label=once("paper"))
    if chance is not None:
        ax.axvline(chance * scale, color="0.5", linestyle="--", linewidth=1, zorder=1,
                   label=once(f"chance ({chance * scale:.3g})"))
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    ax.set_xlabel(xlabel)
    ax.set_ylabel("row")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if shown:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)
