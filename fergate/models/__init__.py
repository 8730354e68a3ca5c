"""Model families and the one contract they follow.

A family is a module: `fergate/models/<name>.py`, or any importable module named by
`config.model` (a family kept outside fergate). The trainer, the evaluator and `fergate
bench` call only the functions below, through `family(name)`, which fills in the defaults
of the optional ones. Every function takes the resolved config first.

Required:

    build(config) -> flax.linen.Module
        The model, made from its config section by keyword. `module.apply(variables, batch,
        train=...)` returns a dict: "logits" (B, K) always; "losses" {name: scalar}, auxiliary
        loss terms already weighted (added by the default `loss`); "metrics" {name: scalar},
        logged during training, not optimised; "introspect" {name: (B, ...)}, values the
        evaluator averages per class and hands to `reports` (gates, attention maps); optionally
        "features" {(B, ...)}, a representation `fergate features` writes into the records for a
        later stage to read (`config.data.features_from`).
    inputs(config) -> {field: (per-example shape, numpy dtype)}
        The fields of the batches the model reads, as they are after `transforms`.

Optional (defaults in this module):

    predict_inputs(config) -> {field: (per-example shape, numpy dtype)}
        The inputs of an evaluation batch, where they differ from the training batch's
        `inputs` (a frame CNN trained on a few frames of each clip that reads all T in
        evaluation): the shapes `fergate export` serializes its function for. Default: `inputs`.
    record_fields(config) -> (field, ...)
        The record fields to read, when `transforms` derive inputs from others (e.g. a point
        from the landmarks). Default: the `inputs` fields.
    resolve(config, manifest | None) -> None
        Fills config fields that depend on the data (e.g. the number of training subjects)
        before anything is built; the manifest is None when there is no data (a benchmark).
    statistics(config, batches) -> {name: array}
        Values measured once on the training split before training starts (e.g. the mean
        and spread that standardise an input), given all its batches as evaluation sees
        them; they go into the model's "stats" variable collection (the module declares
        them) and are checkpointed with the state. Default: none.
    loss(config, outputs, batch) -> (loss, {name: scalar})
        Default: softmax cross-entropy over the unmasked examples plus outputs["losses"] (a
        family's own loss adds those itself); the trainer adds accuracy, lr and grad_norm.
    transforms(config, train) -> [grain transform]
        The family's input transforms, in order: `grain.transforms.RandomMap`s (augmentations,
        training only, seeded per example) and `Map`s. Flip rules per field live in
        `fergate.data.pipeline.RandomFlip`. Default: none.
    example_batch(config, n) -> {field: array}
        A batch of `n` examples with realistic values of the `inputs` shapes, plus "label"
        and "mask": for initialisation and `fergate bench`. Default: random values by dtype.
    reports(results, outdir) -> dict
        The family's figures and introspection, written into `outdir` from an evaluation
        (`Results`); returns entries to add to eval.json. Default: none.
    compare(runs, outdir) -> [paths]
        Figures across several evaluated runs {workdir: eval.json}, for `fergate eval
        --compare`. Default: none (a UserError).
    attend(config, module, variables, image) -> (h, w) map
        The model's spatial attention over a whole image of any size (the fully
        convolutional mode of `fergate attend`), weights summing to 1. Default: none.
    stages(config) -> {name: config}
        Earlier training stages this config needs, each trained into W/pretrain/NAME before
        it (unless finished) when `config.init.params_from` names "pretrain"; the subtrees
        `config.init.params` are then loaded from them. Default: the stages listed in
        `config.pretrain` (`fergate.config.pretrain_stages`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fergate import config as config_lib
from fergate.data import pipeline
from fergate.errors import UserError

#: The families fergate ships (`config.model`); a new fergate/models/<name>.py, or any importable
#: module following the contract, works too.
FAMILIES = ("modul", "thin", "attention", "micro", "vshnn")


@dataclasses.dataclass
class Results:
    """What a family's `reports` reads: one evaluated split, example by example."""

    config: Any
    classes: list[str]
    metrics: dict  #: eval.json as computed so far (accuracy, confusion matrix, ...)
    labels: np.ndarray  #: (N,)
    logits: np.ndarray  #: (N, K)
    introspect: dict[str, np.ndarray]  #: name -> (N, ...)
    index: np.ndarray  #: (N,) each example's record index in the split
    read: Callable[[np.ndarray, tuple[str, ...]], dict[str, np.ndarray]]
    """read(indices, fields): those records' fields as the model saw them (eval transforms), stacked."""

    def class_means(self, name: str) -> dict[str, np.ndarray]:
        """{class: mean of introspection tensor `name` over its examples} (classes with examples)."""
        v = self.introspect[name]
        return {c: v[self.labels == i].mean(0) for i, c in enumerate(self.classes) if (self.labels == i).any()}

    def class_examples(self, per_class: int) -> dict[int, np.ndarray]:
        """{class index: the record indices of its first `per_class` examples}."""
        return {i: self.index[self.labels == i][:per_class] for i in range(len(self.classes))
                if (self.labels == i).any()}


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax cross-entropy of integer `labels`, computed in float32 and averaged over the
    examples with mask 1; a leading batch axis of `labels` and `mask`, any axes between
    (frames) averaged first."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return masked_mean(ce.reshape(ce.shape[0], -1).mean(1), mask)


def cross_entropy(config, outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
    """The default loss: `masked_cross_entropy` of the logits plus the model's auxiliary
    `losses`; metrics: "ce", each auxiliary term and the model's `metrics`."""
    ce = masked_cross_entropy(outputs["logits"], batch["label"], batch["mask"])
    extra = outputs.get("losses", {})
    return ce + sum(extra.values()), {"ce": ce, **extra, **outputs.get("metrics", {})}


#: compute dtype of train.dtype="auto" per backend: bfloat16 where it is the faster (GPU tensor
#: cores, TPU MXU passes), float32 on CPU (XLA:CPU's bfloat16 step measured 0.66x float32's)
AUTO_DTYPE = {"gpu": "bfloat16", "cuda": "bfloat16", "rocm": "bfloat16", "tpu": "bfloat16"}


def compute_dtype(config) -> jnp.dtype:
    """The dtype the model computes in (`config.train.dtype`; "auto": `AUTO_DTYPE` of the
    default backend, else float32). Parameters and optimizer state stay float32."""
    name = config.train.dtype
    if name == "auto":
        name = AUTO_DTYPE.get(jax.default_backend(), "float32")
    try:
        dtype = jnp.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise UserError(f"config train.dtype={name!r}: auto, float32, bfloat16 or float16")
    return dtype


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of per-example values over the examples with mask 1 (padding has mask 0)."""
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def num_classes_from_data(config, section: str, without_data: int) -> None:
    """`config.<section>.num_classes` from the data's classes (`config.data.classes`, filled
    from the manifest): 0 takes their number; a number fixed in the config that differs is
    refused, naming both. Without data (a benchmark), 0 becomes `without_data`."""
    sec, classes = config[section], tuple(config.data.classes)
    if not classes:
        sec.num_classes = sec.num_classes or without_data
    elif sec.num_classes and sec.num_classes != len(classes):
        raise UserError(f"config {section}.num_classes={sec.num_classes} but the data has {len(classes)} classes "
                        f"({', '.join(classes)}); leave it at 0 to take the data's")
    else:
        sec.num_classes = len(classes)


def face_transforms(config, size: int, grey: bool) -> list:
    """`pipeline.face_transforms` with the augmentations `config.data` asks for."""
    d = config.data
    return pipeline.face_transforms(size, grey, flip=d.flip, brightness_contrast=d.brightness_contrast,
                                    rotate=d.rotate, hue_saturation=d.hue_saturation)


def random_batch(inputs: dict, n: int) -> dict[str, np.ndarray]:
    """`n` examples of an `inputs` spec: uint8 images uniform in [0, 255], floats standard
    normal, integers 0; label 0, mask 1."""
    rng = np.random.default_rng(0)
    batch = {}
    for k, (shape, dtype) in inputs.items():
        shape, dtype = (n, *shape), np.dtype(dtype)
        if dtype == np.uint8:
            batch[k] = rng.integers(0, 256, shape, np.uint8)
        elif dtype.kind == "f":
            batch[k] = rng.standard_normal(shape).astype(dtype)
        else:
            batch[k] = np.zeros(shape, dtype)
    batch["label"] = np.zeros((n,), np.int32)
    batch["mask"] = np.ones((n,), np.float32)
    return batch


class Family:
    """A family module with the contract's defaults filled in."""

    def __init__(self, module: ModuleType):
        self.name, self.module = module.__name__.removeprefix("fergate.models."), module
        missing = [f for f in ("build", "inputs") if not callable(getattr(module, f, None))]
        if missing:
            raise UserError(f"model family {module.__name__} lacks {', '.join(missing)} (see fergate.models)")
        self.build, self.inputs = module.build, module.inputs
        for name in ("predict_inputs", "record_fields", "resolve", "statistics", "loss", "transforms",
                     "example_batch", "reports", "compare", "attend", "stages"):
            if hasattr(module, name):
                setattr(self, name, getattr(module, name))

    # the defaults of the optional functions
    def predict_inputs(self, config) -> dict:
        return self.inputs(config)

    def record_fields(self, config) -> tuple[str, ...]:
        return tuple(self.inputs(config))

    def resolve(self, config, manifest: dict | None) -> None:
        pass

    def statistics(self, config, batches) -> dict[str, np.ndarray]:
        return {}

    loss = staticmethod(cross_entropy)

    def transforms(self, config, train: bool) -> list:
        return []

    def example_batch(self, config, n: int) -> dict[str, np.ndarray]:
        return random_batch(self.inputs(config), n)

    def reports(self, results: Results, outdir: str) -> dict:
        return {}

    def compare(self, runs: dict[str, dict], outdir: str) -> list[str]:
        raise UserError(f"model family {self.name} has no figures across runs (--compare)")

    def attend(self, config, module, variables: dict, image: np.ndarray) -> np.ndarray:
        raise UserError(f"model family {self.name} has no attention map (fergate attend)")

    stages = staticmethod(config_lib.pretrain_stages)


def family(name: str) -> Family:
    """The family `config.model` names: fergate/models/<name>.py, else the module `name`."""
    for module in (f"fergate.models.{name}", name):
        try:
            return Family(importlib.import_module(module))
        except ModuleNotFoundError as e:
            if not (e.name and module.startswith(e.name)):
                raise  # the family exists but imports something missing
    raise UserError(f"unknown model family {name!r}; fergate has {', '.join(FAMILIES)}, or name an importable "
                    "module that follows the contract of fergate.models")
