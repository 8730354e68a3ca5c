"""`fergate predict --annotate`: predictions drawn on their inputs, written as they come.

A photo gives one annotated image in the photo's own format (a PNG stays a PNG; a format
OpenCV cannot write becomes a PNG). A video gives one annotated video of every frame it
decodes, at its frame rate (MPEG-4 part 2, `mp4v` in .mp4: every opencv-python-headless wheel
writes it), and its annotated frames as images only on request (`--frames`). Prediction lines
come in input order, so a video is decoded once, front to back, beside the predictions: no
seeking, one frame held at a time. A frame the model skipped (`--every K`) keeps the faces of
the last one it saw, K - 1 frames at most; a clip model's window label stays over the window's
frames until the next window starts.

Line widths, landmark dots and text grow with the image (`style`), and a label stays wholly
inside the image whatever the box (`label_box`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import cv2
import numpy as np

#: colours (BGR, as OpenCV draws)
BOX, LANDMARK, INK, OUTLINE = (0, 255, 0), (0, 255, 255), (255, 255, 255), (0, 0, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX
#: annotated videos: the codec and container, and the fallback where a build lacks it
VIDEO_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))


@dataclasses.dataclass(frozen=True)
class Style:
    line: int  #: box thickness
    radius: int  #: landmark dot radius
    font: float  #: font scale
    text: int  #: text stroke (the outline around it is 2 px thicker)
    margin: int  #: between a label and the box or the image's edge


def style(shape: Sequence[int]) -> Style:
    """How thick to draw on an image of `shape`: in proportion to its smaller side (at 480 px:
    2 px boxes, dots of radius 2, font scale 0.5), so that landmarks stay visible on a
    4000-pixel photo and a label fits a small frame."""
    s = min(shape[:2]) / 480
    return Style(line=max(1, round(2 * s)), radius=max(1, round(1.5 * s)), font=max(0.35, 0.5 * s),
                 text=max(1, round(s)), margin=max(2, round(3 * s)))


def clip_box(box: Sequence[float], shape: Sequence[int], line: int = 1) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of `box` clipped to an image of `shape`, so that all four
    sides, `line` pixels thick, show: a face cut by the image's edge is framed at that edge."""
    h, w = shape[:2]
    half = line // 2
    left, top, right, bottom = (int(round(v)) for v in box)
    return (min(max(left, half), w - 1 - half), min(max(top, half), h - 1 - half),
            min(max(right, half), w - 1 - half), min(max(bottom, half), h - 1 - half))


def label_box(text: str, anchor: tuple[int, int], shape: Sequence[int], st: Style) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of `text` drawn at `anchor` (a box's top-left corner): above
    it, or below it (inside the box) where there is no room above; moved left where it would
    leave the image on the right, so that it lies inside the image."""
    (tw, th), base = cv2.getTextSize(text, FONT, st.font, st.text + 2)
    h, w = shape[:2]
    x, y = anchor
    left = max(0, min(x, w - st.margin - tw))
    top = y - st.margin - th - base
    if top < st.margin:
        top = y + st.margin
    top = max(0, min(top, h - st.margin - th - base))
    return left, top, left + tw, top + th + base


def draw(img: np.ndarray, text: str, box: Sequence[float] | None = None,
         landmarks: Sequence[Sequence[float]] = ()) -> tuple[int, int, int, int]:
    """Draws a face's box (clipped: `clip_box`), its landmarks and its label (inside the image:
    `label_box`) on the BGR image `img` in place; without a box, the label at the top left (a
    clip model's window). Returns the label's (left, top, right, bottom)."""
    st = style(img.shape)
    anchor = (0, 0)
    if box is not None:
        left, top, right, bottom = clip_box(box, img.shape, st.line)
        cv2.rectangle(img, (left, top), (right, bottom), BOX, st.line)
        anchor = (left, top)
    for x, y in landmarks:
        cv2.circle(img, (int(round(x)), int(round(y))), st.radius, LANDMARK, -1, cv2.LINE_AA)
    rect = label_box(text, anchor, img.shape, st)
    (_, th), _ = cv2.getTextSize(text, FONT, st.font, st.text + 2)
    org = (rect[0] + 1, rect[1] + th)
    cv2.putText(img, text, org, FONT, st.font, OUTLINE, st.text + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, st.font, INK, st.text, cv2.LINE_AA)
    return rect


def text_of(line: dict) -> str:
    """A prediction line's label as drawn: "happy 0.93" (a clip window: "frames [16, 31]: ...")."""
    text = f"{line['label']} {line['probabilities'][line['label']]:.2f}"
    return f"frames [{line['frames'][0]}, {line['frames'][1]}]: {text}" if "frames" in line else text


def image_path(outdir: str, source: str) -> str:
    """The annotated copy of photo `source`: its name, its format where OpenCV writes it, else PNG."""
    stem, ext = os.path.splitext(os.path.basename(source))
    ext = ext.lower() if ext and cv2.haveImageWriter(f"x{ext.lower()}") else ".png"
    return os.path.join(outdir, stem + ext)


def is_video(source: str) -> bool:
    from fergate.video import VIDEO_EXTS

    return source.lower().endswith(VIDEO_EXTS)


class Annotator:
    """Prediction lines (`fergate predict`'s, in input order) drawn on their inputs into
    `outdir`: `add` each line, `close` at the end."""

    def __init__(self, outdir: str, frames: bool = False, every: int = 1):
        os.makedirs(outdir, exist_ok=True)
        self.outdir, self.frames, self.every = outdir, frames, every
        self.source: str | None = None
        self.photo: np.ndarray | None = None
        self.video: VideoAnnotator | None = None

    def add(self, line: dict) -> None:
        if line["source"] != self.source:
            self.finish()
            self.source = line["source"]
            if is_video(self.source):
                stem = os.path.splitext(os.path.basename(self.source))[0]
                self.video = VideoAnnotator(self.source, os.path.join(self.outdir, stem),
                                            self.outdir if self.frames else None)
            else:
                from fergate import face as F

                self.photo = np.ascontiguousarray(F.load_image(self.source)[..., ::-1])
        if self.video is not None:
            if "frame" in line:  # a face model: this frame, carried over the frames it skipped
                self.video.add(line["frame"], self.every - 1, text_of(line), line["box"], line["landmarks"])
            else:  # a clip model's window: over its frames
                first, last = line["frames"]
                self.video.add(first, last - first, text_of(line))
        else:
            draw(self.photo, text_of(line), line.get("box"), line.get("landmarks", ()))

    def finish(self) -> None:
        """Writes what the current input's lines drew."""
        if self.video is not None:
            self.video.close()
        elif self.photo is not None:
            cv2.imwrite(image_path(self.outdir, self.source), self.photo)
        self.source, self.photo, self.video = None, None, None

    def close(self) -> None:
        self.finish()


class VideoAnnotator:
    """One video's annotated copy, `stem` + ".mp4", written frame by frame as its annotations
    come (frame indices never decrease), and each annotated frame as `stem_fNNNNNN.jpg` in
    `frames_dir` when given."""

    def __init__(self, source: str, stem: str, frames_dir: str | None):
        self.cap = cv2.VideoCapture(source)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0  # a container that does not say
        self.stem, self.frames_dir = stem, frames_dir
        self.writer: cv2.VideoWriter | None = None
        self.path: str | None = None
        self.pos = 0  #: the next frame to decode
        self.frame: np.ndarray | None = None  #: the frame being annotated (decoded, not yet written)
        self.index = -1  #: its index
        self.marks: list[tuple] = []  #: what is drawn on it: (text, box, landmarks)
        self.until = -1  #: the last frame its marks are carried to

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            return None
        self.pos += 1
        return frame

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            h, w = frame.shape[:2]
            for codec, ext in VIDEO_CODECS:
                self.path = self.stem + ext
                self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*codec), self.fps, (w, h))
                if self.writer.isOpened():
                    break
            else:
                from fergate.errors import UserError

                raise UserError(f"OpenCV here writes no video ({', '.join(c for c, _ in VIDEO_CODECS)}): "
                                f"{self.stem}: annotate photos, or install opencv-python-headless")
        self.writer.write(frame)

    def end_frame(self) -> None:
        """Writes the frame being annotated (and its image, with `frames_dir`)."""
        if self.frame is None:
            return
        self.write(self.frame)
        if self.frames_dir is not None:
            cv2.imwrite(os.path.join(self.frames_dir, f"{os.path.basename(self.stem)}_f{self.index:06d}.jpg"),
                        self.frame)
        self.frame = None

    def copy_until(self, stop: int | None) -> None:
        """Writes the frames before `stop` (None: all that are left), the current marks drawn on
        those they are carried to."""
        while stop is None or self.pos < stop:
            i, frame = self.pos, self.read()
            if frame is None:
                return
            if i <= self.until:
                for mark in self.marks:
                    draw(frame, *mark)
            self.write(frame)

    def add(self, index: int, carry: int, text: str, box=None, landmarks=()) -> None:
        """A mark (a label, a face's box and landmarks) on frame `index`, and on the `carry`
        frames after it that no later mark replaces."""
        if index != self.index:
            if index < self.pos:  # the same video given again: its copy is written already
                return
            self.end_frame()
            self.copy_until(index)
            self.frame, self.index, self.marks = self.read(), index, []
            if self.frame is None:
                return
        if self.frame is None:
            return
        self.marks.append((text, box, landmarks))
        self.until = index + carry
        draw(self.frame, text, box, landmarks)

    def close(self) -> None:
        self.end_frame()
        self.copy_until(None)
        if self.writer is not None:
            self.writer.release()
        self.cap.release()
