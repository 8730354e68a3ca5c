"""Model families and the one contract they follow.

A family is a `Family` subclass, exported as `FAMILY` by its module: `fergate/models/<name>.py`,
or any importable module named by `config.model` (a family kept outside fergate). The
trainer, the evaluator, `fergate bench` and export call only the hooks below, through
`family(name)`. Every hook takes the resolved config first. A public attribute of a subclass
that is not one of them is an error when the class is made (a misspelled hook never falls
back to the default silently).

Declarations (class attributes):

    name: str                     the family's name (`config.model`)
    section: str                  the config section of its model (`config.<section>.num_classes`)
    bench_classes: int            classes when there is no data (a benchmark)
    fields: tuple[Field, ...]     record fields it reads that fergate does not declare
                                  (`fergate.data.fields`), registered when the class is made
    augmentation_ops: tuple[str]  the `config.data.augment` ops it can take (`augmentations`)

Required:

    build(config) -> flax.linen.Module
        The model, made from its config section by keyword. `module.apply(variables, batch,
        train=...)` returns `Outputs`.
    inputs(config) -> {field: (per-example shape, numpy dtype)}
        The fields of the batches the model reads, as they are after its transforms.

Optional (defaults here):

    predict_inputs(config)        the inputs of an evaluation batch where they differ from
                                  `inputs` (a frame CNN reads all T frames): what `fergate
                                  export` serializes its function for. Default: `inputs`.
    record_fields(config)         the record fields to read, when transforms derive inputs
                                  from others. Default: the `inputs` fields.
    resolve(config, manifest)     fills config fields that depend on the data before anything
                                  is built (manifest None: no data). Default: the number of
                                  classes (`num_classes_from_data`).
    statistics(config, batches)   values measured once on the training split (its batches as
                                  evaluation sees them) into the "stats" collection.
    loss(config, outputs, batch)  -> (loss, {name: scalar}). Default: `cross_entropy`.
    preprocess(config, train)     -> (before, after): the family's deterministic transforms
                                  (grain `Map`s; a `RandomMap` runs in training only) before and
                                  after `config.data.augment`'s ops (`transforms` composes them);
                                  `augment.Op`s that end `before` (a random crop) run with those
                                  ops, in the step when they can (`device_ops`).
    augmentations(config)         the ops it takes for this config. Default: `augmentation_ops`.
    example_batch(config, n)      a batch of `n` realistic examples, plus "label" and "mask".
    reports(results, outdir)      the family's figures from an evaluation (`Results`) -> entries
                                  for eval.json.
    compare(runs, outdir)         figures across evaluated runs (`fergate eval --compare`).
    attend(config, module, variables, image) -> (h, w) map
                                  spatial attention over a whole image (`fergate attend`).
    stages(config)                earlier training stages {name: config} (`config.pretrain`).
    backbones(config)             {name: Backbone}: where published weights load
                                  (`--config.init.weights`, `fergate.weights.init`). Default: none.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any, ClassVar, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fergate import config as config_lib
from fergate import plugins
from fergate.data import augment
from fergate.data import fields as fields_lib
from fergate.errors import UserError

#: The families fergate ships (`config.model`); a new fergate/models/<name>.py, or any importable
#: module following the contract, works too.
FAMILIES = ("modul", "thin", "attention", "micro", "vshnn")


class Outputs(TypedDict, total=False):
    """What a model's `apply` returns."""

    logits: jax.Array  #: (B, K), always
    losses: dict  #: {name: scalar} auxiliary loss terms, already weighted (the default loss adds them)
    metrics: dict  #: {name: scalar} logged during training, not optimised
    introspect: dict  #: {name: (B, ...)} averaged per class by the evaluator, handed to `reports`
    features: jax.Array  #: (B, ...) what `fergate features` writes for a later stage (`data.features_from`)
    representations: dict  #: {name: (B, D)} embeddings `fergate eval --pairs` compares (THIN, Fig. 9)


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


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Where a model takes published weights (`fergate.weights`): `archs` the layouts it
    reads, `places` {subtree of the arch's network: subtree of the model} ('/'-joined paths),
    `required`: the model is not trained without them (a frozen network the paper loads)."""

    archs: tuple[str, ...]
    places: dict[str, str]
    required: bool = False


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


#: the hooks and declarations of the contract (the module docstring)
CONTRACT = frozenset({
    "name", "section", "bench_classes", "fields", "augmentation_ops",
    "build", "inputs", "predict_inputs", "record_fields", "resolve", "statistics", "loss", "preprocess",
    "augmentations", "example_batch", "reports", "compare", "attend", "stages", "backbones"})

#: hooks of the earlier, module-function contract, and what replaces them
RENAMED = {"transforms": "'preprocess' (the family's maps before / after config.data.augment's ops)"}


class Family:
    """The contract's defaults; a family subclasses it (the module docstring)."""

    name: ClassVar[str] = ""
    section: ClassVar[str] = ""
    bench_classes: ClassVar[int] = 7
    fields: ClassVar[tuple[fields_lib.Field, ...]] = ()
    augmentation_ops: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr in vars(cls):
            if not attr.startswith("_") and attr not in CONTRACT:
                close = [RENAMED.get(c, repr(c)) for c in difflib.get_close_matches(attr, [*CONTRACT, *RENAMED], 1)]
                raise TypeError(f"model family {cls.__qualname__}: {attr!r} is not a hook of the family contract"
                                f"{f' (did you mean {close[0]}?)' if close else ''}; see fergate.models")
        for field in cls.fields:
            fields_lib.register(field)

    def build(self, config):
        raise NotImplementedError

    def inputs(self, config) -> dict:
        raise NotImplementedError

    def predict_inputs(self, config) -> dict:
        return self.inputs(config)

    def record_fields(self, config) -> tuple[str, ...]:
        return tuple(self.inputs(config))

    def resolve(self, config, manifest: dict | None) -> None:
        num_classes_from_data(config, self.section, self.bench_classes)

    def statistics(self, config, batches) -> dict[str, np.ndarray]:
        return {}

    def loss(self, config, outputs: Outputs, batch: dict) -> tuple[jax.Array, dict]:
        return cross_entropy(config, outputs, batch)

    def preprocess(self, config, train: bool) -> tuple[list, list]:
        return [], []

    def augmentations(self, config) -> tuple[str, ...]:
        return self.augmentation_ops

    def example_batch(self, config, n: int) -> dict[str, np.ndarray]:
        return random_batch(self.inputs(config), n)

    def reports(self, results: Results, outdir: str) -> dict:
        return {}

    def compare(self, runs: dict[str, dict], outdir: str) -> list[str]:
        raise UserError(f"model family {self.name} has no figures across runs (--compare)")

    def attend(self, config, module, variables: dict, image: np.ndarray) -> np.ndarray:
        raise UserError(f"model family {self.name} has no attention map (fergate attend)")

    def stages(self, config) -> dict:
        return config_lib.pretrain_stages(config)

    def backbones(self, config) -> dict[str, Backbone]:
        return {}

    # composed from the hooks, not overridden
    def transforms(self, config, train: bool) -> list:
        """The input transforms of a record, all on the host: `preprocess`'s before, in
        training the config's augmentation ops, then its after (what `fergate export` and the
        evaluation reports apply to a record)."""
        before, after = self.preprocess(config, train)
        return [*before, *(augment.for_family(config, self) if train else ()), *after]

    def host_transforms(self, config, train: bool) -> list:
        """The transforms the input pipeline runs: `transforms`, less the augmentation ops
        when they run in the jitted step (`device_ops`); the family's maps then all come
        before them (a resize: the ops act on the model's input size and colour, so that
        hue_saturation leaves a model's grey input alone, where on the host it changed the
        colour face the grey input was made from)."""
        if not (train and self.device_ops(config)):
            return self.transforms(config, train)
        maps, _, after = self._preprocess_ops(config, train)
        return [*maps, *after]

    def device_ops(self, config) -> list:
        """The ops the training step applies to each batch (`augment.on_device`): the family's
        own (`preprocess`'s trailing `augment.Op`s, a random crop) and then the config's, when
        every one of them can run there; else none (they run on the host)."""
        _, own, _ = self._preprocess_ops(config, True)
        ops = [*own, *augment.for_family(config, self)]
        return ops if augment.runs_on_device(ops) else []

    def _preprocess_ops(self, config, train: bool) -> tuple[list, list, list]:
        """`preprocess`'s before maps split into its maps and its trailing ops, and its after."""
        before, after = self.preprocess(config, train)
        n = len(before)
        while n and isinstance(before[n - 1], augment.Op):
            n -= 1
        return list(before[:n]), list(before[n:]), list(after)

    def check(self, config) -> None:
        """The config's augmentation ops, checked against what this family takes."""
        augment.for_family(config, self)


def family(name: str) -> Family:
    """The family `config.model` names: fergate/models/<name>.py, else the module `name`;
    its `FAMILY` class, instantiated."""
    for module_name in (f"fergate.models.{name}", name):
        if (module := plugins.import_named(module_name)) is None:
            continue
        cls = getattr(module, "FAMILY", None)
        if not (isinstance(cls, type) and issubclass(cls, Family)):
            raise UserError(f"module {module_name} is not a model family: it defines no FAMILY (a subclass of "
                            "fergate.models.Family; see its docstring)")
        return cls()
    raise UserError(f"unknown model family {name!r}; fergate has {', '.join(FAMILIES)}, or name an importable "
                    "module that follows the contract of fergate.models")
