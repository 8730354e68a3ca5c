"""Clip sources: video files decoded with OpenCV, folders of frame images (CK+ / MMI style),
and the temporal resampling that gives every clip the same length T.

Decoding is bounded: at most `max_frames` frames of a video are kept, evenly spaced over
it, so a long video costs at most max_frames x H x W x 3 bytes (64 frames of 720 x 576:
80 MB) in a prep worker, whatever its length.
"""

from __future__ import annotations

import os
import re

import cv2
import numpy as np

from data_prep import face as F

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
#: frames decoded from one video at most (PrepOptions.max_frames, `fergate prep --max_frames`)
MAX_FRAMES = 64


def even_indices(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when n <= k)."""
    return np.arange(n) if n <= k else np.round(np.linspace(0, n - 1, k)).astype(int)


def read_video(path: str, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """RGB uint8 frames of a video, at most `max_frames` of them evenly spaced over it.

    Frames are grabbed in order (seeking is inexact in many codecs) and only the chosen ones
    converted. With CAP_PROP_FRAME_COUNT known they are chosen from it; without it every
    `stride`-th frame is kept, the stride doubling whenever 2 x max_frames are held, so memory
    stays bounded either way. A missing, corrupt or empty video raises SkipItem."""
    if not os.path.isfile(path):
        raise F.SkipItem("unreadable_video", f"{path}: no such file")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise F.SkipItem("unreadable_video", f"{path}: OpenCV cannot open it (corrupt, or not a video)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(even_indices(count, max_frames).tolist()) if count > 0 else None
        last = max(wanted) if wanted else -1
        frames: list[np.ndarray] = []
        stride, i = 1, 0
        while cap.grab():
            keep = i in wanted if wanted is not None else i % stride == 0
            if keep:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    frames.append(frame)
                if wanted is None and len(frames) >= 2 * max_frames:
                    frames, stride = frames[::2], stride * 2
            if i == last:
                break
            i += 1
    finally:
        cap.release()
    if not frames:
        raise F.SkipItem("unreadable_video", f"{path}: no frame could be decoded")
    return [np.ascontiguousarray(frames[j][..., ::-1]) for j in even_indices(len(frames), max_frames)]


def natural_key(name: str) -> list:
    """Sort key with digit runs compared as numbers: frame_2 before frame_10."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def frame_names(path: str) -> list[str]:
    """The frame images of a folder (CK+ / BU-4DFE / MMI style sequences) in natural name order."""
    if not os.path.isdir(path):
        return []
    return sorted((f for f in os.listdir(path) if f.lower().endswith(F.IMAGE_EXTS)), key=natural_key)


def read_frame_folder(path: str, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """RGB frames of an image sequence (a folder of frame images in natural name order), at
    most `max_frames` evenly spaced; only those are read. An unreadable frame skips the clip."""
    names = frame_names(path)
    if not names:
        raise F.SkipItem("unreadable_video", f"{path}: no frame images")
    return [F.load_image(os.path.join(path, names[j])) for j in even_indices(len(names), max_frames)]


def read_clip(path: str, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """A video file or a folder of frames."""
    return read_frame_folder(path, max_frames) if os.path.isdir(path) else read_video(path, max_frames)


def resample(frames: np.ndarray, length: int) -> np.ndarray:
    """`frames` (n x ...) linearly interpolated in time to `length` frames at positions
    t (n - 1) / (length - 1): per pixel or coordinate, `np.interp` over the frame index; it
    stretches a short clip and thins a long one evenly. Integer input is rounded back to its
    dtype, so an aligned uint8 clip stays uint8."""
    x = np.asarray(frames)
    if len(x) == 0 or length < 1:
        raise ValueError(f"resample {len(x)} frames to {length}: need at least one of each")
    pos = np.linspace(0, len(x) - 1, length)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(x) - 1)
    w = (pos - lo).reshape((-1,) + (1,) * (x.ndim - 1))
    xf = x.astype(np.float64)
    out = xf[lo] + (xf[hi] - xf[lo]) * w  # np.interp's arithmetic, in float64 as it
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(x.dtype)
