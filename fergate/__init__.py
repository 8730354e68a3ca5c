"""fergate: gated, multi-modal facial-expression recognition in JAX.

`fergate.load(E)` loads a model exported with `fergate export` (`fergate.export.Model`):
`load(E).predict(["photo.jpg", ...])` -> one dict per face.
"""


def version() -> str:
    """fergate's installed version (`fergate --version`, an export's manifest)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("fergate")
    except PackageNotFoundError:
        return "(not installed)"


def load(path: str, batch_size: int = 32):
    """The exported model in `path`, ready to predict (`fergate.export.load`)."""
    from fergate.export import load as _load

    return _load(path, batch_size)
