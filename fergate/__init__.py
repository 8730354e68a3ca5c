"""fergate: gated, multi-modal facial-expression recognition in JAX.

`fergate.load(E)` loads a model exported with `fergate export` (`fergate.export.Model`):
`load(E).predict(["photo.jpg", ...])` -> one dict per face.
"""


def load(path: str, batch_size: int = 32):
    """The exported model in `path`, ready to predict (`fergate.export.load`)."""
    from fergate.export import load as _load

    return _load(path, batch_size)
