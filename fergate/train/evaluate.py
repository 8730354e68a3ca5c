"""Evaluation: accuracy, mean class accuracy, top-k, confusion matrix, and per-class means of
whatever the model exposes under "introspect" (gates, attention), with plots."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from fergate.data import pipeline
from fergate.errors import UserError


def evaluate(m, state, data_dir: str, split: str, classes: list[str]) -> dict:
    """One ordered pass over `split` with model `m` (a trainer.Model) in state `state`."""
    from fergate.train.trainer import global_batch, input_transforms, label_map

    config = m.config
    fields, _, det = input_transforms(config)
    ds = pipeline.make_dataset(data_dir, split, fields, config.eval.batch_size // jax.process_count(),
                               train=False, transforms=det, process_index=jax.process_index(),
                               process_count=jax.process_count(), label_field=config.data.get("label_field", "label"),
                               label_map=label_map(config, pipeline.read_manifest(data_dir)))
    image_field = next((f for f in ("image", "face") if f in fields), None)
    top = TopInputs() if image_field and jax.process_count() == 1 else None
    logits, labels, intro, sums = [], [], {}, {}
    for local in ds:
        out = jax.device_get(m.predict(state, global_batch(local, m.batch_sharding)))
        valid = out["mask"] > 0
        logits.append(out["logits"][valid])
        labels.append(out["label"][valid])
        for name, v in out["introspect"].items():
            intro.setdefault(name, []).append(np.asarray(v, np.float32)[valid])
        if top is not None and "gate" in out["introspect"]:
            top.update(np.asarray(out["introspect"]["gate"])[valid], local[image_field][valid])
        for name in ("face_sum", "landmarks_sum"):
            if name in out:
                sums[name] = sums.get(name, 0) + out[name]
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    intro = {n: np.concatenate(v) for n, v in intro.items()}
    res = metrics(logits, labels, classes, config.eval.top_k, intro, sums)
    if "abs_cos" in intro:  # THIN Fig. 8: the distribution of |cos| over the split (all exogenous variables)
        counts, edges = np.histogram(intro["abs_cos"].ravel(), bins=20, range=(0.0, 1.0))
        res["abs_cos_histogram"] = {"counts": counts.tolist(), "edges": edges.tolist(),
                                    "mean": float(intro["abs_cos"].mean())}
    if top is not None and top.values is not None:
        res["_top_inputs"] = top.images
    return res


class TopInputs:
    """For each column of a gate (B, L): the k inputs with the highest value so far (THIN
    Fig. 10: what reaches each expert), kept as a running top-k over the batches."""

    def __init__(self, k: int = 8):
        self.k, self.values, self.images = k, None, None

    def update(self, gate: np.ndarray, images: np.ndarray) -> None:
        if self.values is None:
            self.values = np.full((gate.shape[1], 0), -np.inf)
            self.images = np.zeros((gate.shape[1], 0) + images.shape[1:], images.dtype)
        vals = np.concatenate([self.values, gate.T], 1)  # (L, k + B)
        imgs = np.concatenate([self.images, np.broadcast_to(images, (gate.shape[1],) + images.shape)], 1)
        order = np.argsort(-vals, 1)[:, : self.k]
        self.values = np.take_along_axis(vals, order, 1)
        self.images = np.take_along_axis(imgs, order.reshape(order.shape + (1,) * (imgs.ndim - 2)), 1)


def metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str], top_k=(1, 2, 3),
            introspect: dict | None = None, sums: dict | None = None) -> dict:
    k = len(classes)
    pred = logits.argmax(-1)
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (labels, pred), 1)
    support = conf.sum(1)
    per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1), np.nan)
    order = np.argsort(-logits, -1)
    res = {
        "examples": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "mean_class_accuracy": float(np.nanmean(per_class)),
        "per_class_accuracy": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, per_class)},
        "top_k": {str(t): float((order[:, :t] == labels[:, None]).any(-1).mean()) for t in top_k if t <= k},
        "confusion_matrix": conf.tolist(),
        "classes": list(classes),
    }
    if introspect:
        res["introspect"] = {
            name: {c: v[labels == i].mean(0).tolist() for i, c in enumerate(classes) if (labels == i).any()}
            for name, v in introspect.items()}
    if sums:
        counts = np.maximum(support, 1).astype(np.float32)
        res["_mean"] = {n.removesuffix("_sum"): v / counts.reshape((-1,) + (1,) * (v.ndim - 1))
                        for n, v in sums.items()}
    return res


def write_reports(res: dict, outdir: str) -> None:
    """eval.json, confusion_matrix.png, and for introspection introspection.json + plots."""
    os.makedirs(outdir, exist_ok=True)
    mean = res.pop("_mean", {})
    top = res.pop("_top_inputs", None)
    with open(os.path.join(outdir, "eval.json"), "w") as f:
        json.dump({k: v for k, v in res.items() if k != "introspect"}, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, conf = res["classes"], np.array(res["confusion_matrix"], np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(classes), 1 + 0.7 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {res['accuracy']:.3f}, mean class {res['mean_class_accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "confusion_matrix.png"), dpi=100)
    plt.close(fig)
    if top is not None:  # rows: experts, columns: the inputs they weigh most
        rows = [np.concatenate(list(r), 1) for r in top]
        grid = np.concatenate(rows, 0)
        fig, ax = plt.subplots(figsize=(0.6 * top.shape[1] + 1, 0.6 * top.shape[0] + 0.6))
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.set_yticks((np.arange(top.shape[0]) + 0.5) * top.shape[2], [f"expert {i}" for i in range(top.shape[0])],
                      fontsize=6)
        ax.set_xticks([])
        ax.set_title("inputs with the highest gate weight, per expert")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "top_inputs_per_expert.png"), dpi=100)
        plt.close(fig)
    if "abs_cos_histogram" in res:
        plot_abs_cos({"this run": res["abs_cos_histogram"]}, os.path.join(outdir, "abs_cos.png"))
    intro = res.get("introspect")
    if not intro:
        return
    with open(os.path.join(outdir, "introspection.json"), "w") as f:
        json.dump(intro, f, indent=1)
    for name, per_class in intro.items():
        width = len(next(iter(per_class.values())))
        if width <= 8:  # e.g. the modal gate: a table of mean values per class (MoDuL Table VIII)
            _plot_table(plt, name, per_class, os.path.join(outdir, f"{name}.png"))
        elif "landmarks" in mean:  # per-landmark values on the mean face (MoDuL Fig. 3)
            _plot_on_face(plt, name, per_class, classes, mean, os.path.join(outdir, f"{name}.png"))


def _plot_table(plt, name, per_class, path):
    rows = list(per_class)
    vals = np.array([per_class[r] for r in rows])
    fig, ax = plt.subplots(figsize=(2 + vals.shape[1], 0.5 + 0.4 * len(rows)))
    ax.imshow(vals, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            ax.text(j, i, f"{vals[i, j]:.3f}", ha="center", va="center", color="white", fontsize=8)
    labels = ["distance", "patch"] if name == "modal_gate" and vals.shape[1] == 2 else range(vals.shape[1])
    ax.set_xticks(range(vals.shape[1]), labels)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(f"mean {name} per class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_on_face(plt, name, per_class, classes, mean, path):
    from fergate.models.modul import landmark_subset

    n = len(next(iter(per_class.values())))
    idx = landmark_subset(n) if n in (49, 68) else np.arange(n)
    cols = len(per_class)
    fig, axes = plt.subplots(1, cols, figsize=(2.2 * cols, 2.6))
    axes = np.atleast_1d(axes)
    for ax, (c, g) in zip(axes, per_class.items()):
        i = classes.index(c)
        lm = mean["landmarks"][i][idx]
        if "face" in mean:
            face = mean["face"][i]
            ax.imshow(face[..., 0] if face.shape[-1] == 1 else face / 255.0, cmap="gray")
        sc = ax.scatter(lm[:, 0], lm[:, 1], c=g, cmap="jet", vmin=0, vmax=2, s=12)
        ax.set_title(c, fontsize=9)
        ax.axis("off")
    fig.colorbar(sc, ax=axes.tolist(), shrink=0.7)
    fig.suptitle(f"mean {name} per class on the mean face")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_abs_cos(histograms: dict[str, dict], path: str) -> None:
    """THIN Fig. 8: |cos(c_sigma(h_exo), c_sigma(h_endo))| distributions, one line per run
    (pass several runs' `eval.json["abs_cos_histogram"]` to compare with and without the
    dispelling loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for label, h in histograms.items():
        edges, counts = np.array(h["edges"]), np.array(h["counts"], np.float64)
        ax.plot((edges[:-1] + edges[1:]) / 2, counts / max(counts.sum(), 1), label=f"{label} (mean {h['mean']:.3f})")
    ax.set_xlabel("|cos|")
    ax.set_ylabel("fraction of examples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_eval(workdir: str) -> dict:
    """A workdir's `eval.json` with the variant it was trained as (`variant`)."""
    from fergate.config import load_workdir

    path = os.path.join(workdir, "eval.json")
    if not os.path.exists(path):
        raise UserError(f"{path} missing: evaluate {workdir} first")
    with open(path) as f:
        res = json.load(f)
    res["variant"] = load_workdir(workdir).get("variant", "?")
    return res


def compare_abs_cos(runs: dict[str, dict], outdir: str) -> str:
    """Fig. 8 across runs {workdir: eval result}: `abs_cos_compare.png` in `outdir`."""
    missing = [w for w, r in runs.items() if "abs_cos_histogram" not in r]
    if missing:
        raise UserError(f"no |cos| introspection in {', '.join(missing)} (THIN exo_tree_gated / thin runs have it)")
    path = os.path.join(outdir, "abs_cos_compare.png")
    plot_abs_cos({f"{r.get('variant', '')} {os.path.basename(os.path.normpath(w))}".strip(): r["abs_cos_histogram"]
                  for w, r in runs.items()}, path)
    return path
