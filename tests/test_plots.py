"""Every figure reads without the paper: a title, labelled axes, colour bars that say what
they measure."""

import numpy as np
import pytest

from fergate import plots


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """The matplotlib figures the plot functions would save, by file name."""
    out = {}

    def keep(fig, path):
        out[path.rsplit("/", 1)[-1]] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return out


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_every_figure_has_a_title_axis_labels_and_labelled_colour_bars(figures):
    rng = np.random.default_rng(0)
    classes = [f"class {i}" for i in range(50)]
    labels = rng.integers(0, 50, 500)
    plots.confusion_matrix(labels, rng.integers(0, 50, 500), classes, "title", "cm50.png")
    plots.confusion_matrix(labels % 7, rng.integers(0, 7, 500), classes[:7], "title", "cm7.png")
    plots.class_table({c: rng.random(2) for c in classes[:7]}, ["a", "b"], "title", "table.png", "what")
    plots.class_table({c: rng.random(32) for c in classes[:7]}, [str(i) for i in range(32)], "title", "wide.png",
                      "what", xlabel="expert")
    faces = {c: rng.integers(0, 255, (64, 64, 1)).astype(float) for c in classes[:3]}
    points = {c: rng.uniform(5, 60, (68, 2)) for c in classes[:3]}
    plots.values_on_faces({c: rng.random(68) for c in classes[:3]}, faces, points, "title", "faces.png", "what",
                          0, 2)
    plots.distributions({"run": {"counts": [1, 2, 3], "edges": [0, 0.3, 0.6, 1.0], "mean": 0.5}}, "x", "title",
                        "hist.png")
    plots.image_grid(rng.integers(0, 255, (4, 8, 16, 16, 1), dtype=np.uint8), [f"expert {i}" for i in range(4)],
                     "title", "grid.png")
    rows = [{"step": 10, "loss": 2.0, "accuracy": 0.2}, {"step": 20, "eval_accuracy": 0.3,
                                                        "eval_mean_class_accuracy": 0.3, "loss": 1.5, "accuracy": 0.4}]
    plots.training_curves({"": rows}, "curves.png")
    plots.training_curves({"float32": rows, "bfloat16": rows}, "compare.png", "title")
    assert len(figures) == 9
    runs = figures["compare.png"].legends[0]
    assert runs.get_title().get_text() == "run" and [t.get_text() for t in runs.get_texts()] == ["float32", "bfloat16"]
    for name, fig in figures.items():
        titles = [fig._suptitle.get_text()] if fig._suptitle else []
        titles += [ax.get_title() for ax in fig.axes]
        assert any(titles), name
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                assert ax.get_ylabel() or ax.get_xlabel(), f"{name}: an unlabelled colour bar"
            elif ax.axison and ax.get_xticks().size:
                assert ax.get_ylabel() or ax.get_xlabel() or ax.get_yticklabels(), f"{name}: unlabelled axes"
        if name in ("cm50.png", "cm7.png", "table.png", "wide.png", "faces.png"):
            assert _colorbars(fig), f"{name}: no colour bar"
    # 50 classes: no numbers in the cells, every class named on both axes
    cm50 = figures["cm50.png"].axes[0]
    assert not [t for t in cm50.texts if t.get_text()] and len(cm50.get_xticklabels()) == 50
    assert len([t for t in figures["cm7.png"].axes[0].texts if t.get_text().endswith("%")]) == 49


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_titles_labels_and_legends_stay_clear_of_each_other(figures):
    """A long title over a 3-class confusion matrix once ran into its colour bar's label; the
    legend of several runs covered their curves, and points at accuracy 1.0 were cut in half."""
    plots.confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 2]), ["displeased", "happy", "surprise"],
                           "modul/joint_rw, step 300, test split\naccuracy 1.000, mean class accuracy 1.000 "
                           "(30 examples)", "cm3.png")
    rows = [{"step": s, "loss": 1 / s, "accuracy": min(1, s / 50)} for s in range(10, 110, 10)]
    rows += [{"step": 100, "eval_accuracy": 1.0, "eval_mean_class_accuracy": 1.0}]
    plots.training_curves({f"run {i}": rows for i in range(3)}, "curves.png", "title")
    for fig in figures.values():
        fig.canvas.draw()
    renderer = figures["cm3.png"].canvas.get_renderer()
    cm, colorbar = figures["cm3.png"].axes[0], _colorbars(figures["cm3.png"])[0]
    title = figures["cm3.png"]._suptitle or cm.title
    assert "step 300, test split" in title.get_text()
    assert not _overlap(title.get_window_extent(renderer), colorbar.yaxis.label.get_window_extent(renderer))
    fig = figures["curves.png"]
    renderer = fig.canvas.get_renderer()
    assert len(fig.legends) == 2 and not any(ax.get_legend() for ax in fig.axes)
    for legend in fig.legends:
        for ax in fig.axes:
            assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    accuracy = fig.axes[1]
    assert accuracy.get_ylabel() == "accuracy" and accuracy.get_ylim()[1] >= 1.04


def test_curves_command_draws_several_runs_and_names_a_missing_one(tmp_path):
    import json
    import subprocess
    import sys

    for name, loss in (("f32", 2.0), ("bf16", 2.1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": loss, "accuracy": 0.3}) + "\n"
                                                       + '{"step": 20, "lo')  # a line still being written
    cmd = [sys.executable, "-m", "fergate", "curves", str(tmp_path / "f32"), str(tmp_path / "bf16"), "--out",
           str(tmp_path / "new" / "c.png"), "--labels", "float32", "bfloat16"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "new" / "c.png").stat().st_size > 0, r.stderr
    r = subprocess.run(cmd[:4] + [str(tmp_path / "nowhere")] + cmd[5:8], capture_output=True, text=True)
    assert r.returncode == 2 and "nowhere: no metrics.jsonl" in r.stderr and len(r.stderr.strip().splitlines()) == 1
