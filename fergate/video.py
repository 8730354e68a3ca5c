"""Clip sources: video files decoded with OpenCV, folders of frame images (CK+ / MMI style),
the temporal resampling that gives every clip the same length T, and a clip record (aligned
frames and landmarks) made of them: `fergate prep` writes clips with it and `fergate predict`
cuts a video's windows with it, so it lives in the library beside the face pipeline.

Decoding is bounded: at most `max_frames` frames of a video are kept, evenly spaced over
it, so a long video costs at most max_frames x H x W x 3 bytes (64 frames of 720 x 576:
80 MB) in a prep worker, whatever its length.
"""

from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np

from fergate import face as F

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


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """How a clip record is made (`clip_record`); `fergate prep`'s options add how records are
    stored, and an export keeps these for `fergate predict`."""

    face: F.FaceOptions = F.FaceOptions()
    clip_size: int = 64  #: side of the aligned clip frames
    frames: int = 16  #: T: every clip is resampled to T frames (and the sample set generates T)
    max_gap: int = 8  #: a frame without a face takes the last box this many frames at most, else it is dropped
    min_faces: int = 4  #: a clip with fewer frames with a (found or carried) face is skipped: too_few_faces
    max_frames: int = MAX_FRAMES  #: frames decoded from one video at most, evenly spaced (bounds memory)


def carry_boxes(rects: list, max_gap: int) -> list:
    """Each frame's face box, or None for a frame to drop: its own detection, else the last
    one if at most `max_gap` frames back (before the first detection: the first one, if at
    most `max_gap` frames ahead). A face lost for longer is likely gone (a cut, a turned
    head): its landmarks in a stale box would be noise."""
    found = [i for i, r in enumerate(rects) if r is not None]
    out, last = [], None
    for i, r in enumerate(rects):
        last = i if r is not None else last
        src = last if last is not None else found[0] if found else None
        out.append(rects[src] if src is not None and abs(i - src) <= max_gap else None)
    return out


def clip_record(frames: list[np.ndarray | F.FaceInput], opts: ClipOptions) -> dict:
    """Per-frame face boxes (the dataset's where a frame has them, else detected, gaps bridged
    by `carry_boxes`, frames beyond a gap dropped), landmarks and alignment of every kept
    frame, then both resampled in time to T (`resample`): T x S x S x C frames and
    T x 68 x 2 landmarks from a clip of any length. `box_source` is the dataset's when every
    kept frame came with its landmarks or box, else detected. A frame's own detection keeps the
    landmarks fitted with it (a rolled face's, fitted upright); a carried box is fitted anew."""
    inputs = [F.as_input(f) for f in frames]
    rects, fitted = [], {}  # fitted: frame index -> the landmarks its own detection fitted
    for i, f in enumerate(inputs):
        rect = F.given_box(f)
        try:
            if rect is None:
                c = F.best_face(f.image, opts.face.upsample, opts.face.min_score, opts.face.detector)
                rect, fitted[i] = c.rect, c.landmarks
            rects.append(rect)
        except F.SkipItem:
            rects.append(None)
    if all(r is None for r in rects):
        raise F.SkipItem("no_face", "in any frame of the clip")
    kept = [(i, f, r) for i, (f, r) in enumerate(zip(inputs, carry_boxes(rects, opts.max_gap))) if r is not None]
    if len(kept) < min(opts.min_faces, len(frames)):
        raise F.SkipItem("too_few_faces", f"{len(kept)} of {len(frames)} frames have a face "
                         f"(min_faces {opts.min_faces}, max_gap {opts.max_gap})")
    clip, lms = [], []
    for i, f, rect in kept:
        lm = np.asarray(f.landmarks, np.float32) if f.landmarks is not None else \
            fitted[i] if i in fitted else F.landmarks(f.image, rect)
        m = F.alignment(lm, opts.clip_size, opts.face.align)
        face = F.warp(f.image, m, (opts.clip_size, opts.clip_size))
        clip.append(face if opts.face.color else face.mean(-1, keepdims=True).astype(np.uint8))
        lms.append(F.apply_affine(m, lm))
    given = all(f.box is not None or f.landmarks is not None for _, f, _ in kept)
    return {"clip": resample(np.stack(clip), opts.frames),
            "clip_landmarks": resample(np.stack(lms), opts.frames),
            "box_source": F.DATASET if given else F.DETECTED}
