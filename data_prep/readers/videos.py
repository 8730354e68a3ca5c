"""Video clips in folders: any `ROOT/<class>/<clip>` layout (`video_folder`) and AFEW's."""

from __future__ import annotations

import logging
import os

from data_prep.readers.base import ClipReader, Item
from data_prep.readers.layout import class_layout, subfolders, subject_of
from fergate import video
from fergate.data.labels import DATASET_CLASSES

log = logging.getLogger(__name__)


class VideoFolderReader(ClipReader):
    """Clips in one sub-folder per class: `ROOT/<class>/<clip>`, or `ROOT/<split>/<class>/...`
    when ROOT holds `train/` or `test/`; a clip is a video file (`video.VIDEO_EXTS`) or a
    folder of frame images (CK+ / MMI style, natural name order); other files are ignored.
    Each clip is its own subject unless its name has a `<subject>__` prefix. At most
    `max_frames` frames of a clip are read, evenly spaced (`fergate.video`); an unreadable,
    empty or faceless clip is skipped and counted by reason."""

    name = "video_folder"
    layout = "ROOT/<class>/<video file or folder of frames>, or ROOT/{train,test}/<class>/..."

    def locate(self):
        if not os.path.isdir(self.source):
            raise self.error("ROOT is not a folder", self.source)
        self.roots, self.classes = self.find_layout(self.source)

    def find_layout(self, source: str) -> tuple[dict[str, str], tuple[str, ...]]:
        roots, classes = class_layout(source)
        if not classes:
            raise self.error("no class folders", source)
        return roots, classes

    def items(self) -> list[Item]:
        out = []
        for split, root in sorted(self.roots.items()):
            folders = subfolders(root)
            for label, c in enumerate(self.classes):
                d = os.path.join(root, c if os.path.isdir(os.path.join(root, c)) else folders.get(c.lower(), c))
                for name in sorted(os.listdir(d), key=video.natural_key) if os.path.isdir(d) else ():
                    path = os.path.join(d, name)
                    if os.path.isdir(path) or name.lower().endswith(video.VIDEO_EXTS):
                        out.append(Item(os.path.relpath(path, self.source), split, label,
                                        subject_of(os.path.splitext(name)[0]), path, "clip"))
        if not out:
            raise self.error(f"no video ({', '.join(video.VIDEO_EXTS)}) or frame folder in the class folders",
                             self.source)
        return out


class AfewReader(VideoFolderReader):
    """AFEW (Acted Facial Expressions in the Wild: film excerpts): `ROOT/Train/<Emotion>/*.avi`
    and `ROOT/Val/<Emotion>/*.avi` (folder names in any case, `Train_AFEW` / `Val_AFEW` too),
    the 7 emotion folders spelled as AFEW does. Val is the test split: AFEW's own test set
    has no public labels, and the papers report Val. AFEW names no actor, so each video is
    its own subject; other folders (AFEW's unlabelled Test) are ignored."""

    name = "afew"
    classes = DATASET_CLASSES["afew"]
    splits = {"train": ("train", "train_afew"), "test": ("val", "val_afew")}
    layout = "ROOT/Train/<Emotion>/*.avi and ROOT/Val/<Emotion>/*.avi, Emotion one of " + ", ".join(classes)

    def find_layout(self, source: str) -> tuple[dict[str, str], tuple[str, ...]]:
        top = subfolders(source)
        roots = {split: os.path.join(source, top[n]) for split, names in self.splits.items()
                 for n in names if n in top}
        known = {c.lower() for c in self.classes}
        if not any(known & set(subfolders(r)) for r in roots.values()):
            raise self.error("no Train/ or Val/ folder of emotion folders", source)
        for r in roots.values():
            if extra := sorted(n for k, n in subfolders(r).items() if k not in known):
                log.info(f"[prep] afew: {r}: {', '.join(extra)} not one of AFEW's 7 emotions: ignored")
        return roots, self.classes


READERS = (VideoFolderReader, AfewReader)
