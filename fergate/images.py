"""Decoding photos for the face pipeline: any image file or array -> H x W x 3 uint8 RGB, and
the reason (`SkipItem`) an input cannot become a record. Apart from `fergate.face` so that the
detectors (`fergate.detectors`) and the readers share them without the landmark models."""

from __future__ import annotations

import numpy as np

#: file name endings of the images `load_image` is meant for (listing a folder of frames or photos)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm")


class SkipItem(Exception):
    """An input that cannot become a record; `reason` is the manifest's counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason



def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, grey+alpha, RGB, RGBA; 8/16-bit or float) -> H x W x 3 uint8."""
    img = np.asarray(img)
    if img.dtype == np.uint16 or (img.dtype.kind in "iu" and img.dtype.itemsize > 1):
        img = (img.astype(np.float32) / max(1.0, float(np.iinfo(img.dtype).max)) * 255.0).round()
    elif img.dtype.kind == "f":
        img = np.clip(img, 0, 1) * 255.0 if img.max(initial=0) <= 1.0 else np.clip(img, 0, 255)
    elif img.dtype == np.bool_:
        img = img * 255
    img = img.astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise SkipItem("not_an_image", f"array of shape {img.shape}")
    if img.shape[-1] in (2, 4):  # drop alpha
        img = img[..., :-1]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def load_image(path: str) -> np.ndarray:
    """Reads an image file as H x W x 3 uint8; raises SkipItem with the reason it can't."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.array(im)
    except UnidentifiedImageError as e:
        raise SkipItem("not_an_image", str(e)) from None
    except OSError as e:
        reason = "truncated" if "truncated" in str(e).lower() or "broken data" in str(e).lower() else "unreadable"
        raise SkipItem(reason, f"{path}: {e}") from None
    except Exception as e:  # decoder bugs on hostile files
        raise SkipItem("unreadable", f"{path}: {e}") from None
    return to_rgb8(arr)
