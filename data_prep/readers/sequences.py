"""The lab-recorded expression sequences: CK+ (frame folders with emotion and landmark
files), BU-4DFE's 2D frames and MMI's videos with XML metadata."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from xml.etree import ElementTree

from data_prep.readers.base import ClipOptions, ClipReader, Item, bad_item, option
from data_prep.readers.layout import child, points, read_numbers, subfolders
from fergate import face as F
from fergate import video
from fergate.data.labels import DATASET_CLASSES
from fergate.errors import UserError


@dataclass(frozen=True)
class CkPlusOptions(ClipOptions):
    apex_frames: int = option(3, "the last K frames of a sequence, labelled with its emotion", metavar="K")
    neutral_frames: int = option(3, "the first N frames of a sequence as neutral (default {default}; 0: none)",
                                 metavar="N")
    contempt: bool = option(True, "drop the contempt sequences (7 classes; default 8)")
    sequences: bool = option(True, "images only (by default every labelled sequence is also a clip, in train_clips)")

    def __post_init__(self):
        if self.apex_frames < 1 or self.neutral_frames < 0:
            raise UserError(f"--apex_frames {self.apex_frames} / --neutral_frames {self.neutral_frames}: "
                            "at least 1 / 0")


@dataclass(frozen=True)
class Bu4dfeOptions(ClipOptions):
    apex_frames: int = option(0, "the middle K frames of each sequence also as images (default {default}: clips "
                              "only)", metavar="K")

    def __post_init__(self):
        if self.apex_frames < 0:
            raise UserError(f"--apex_frames {self.apex_frames}: at least 0")


class CkPlusReader(ClipReader):
    """CK+ (the extended Cohn-Kanade set): frames `ROOT/cohn-kanade-images/S005/001/
    S005_001_00000011.png`, labels `ROOT/Emotion/S005/001/S005_001_00000011_emotion.txt` (one
    float, `3.0000000e+00`: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy,
    6 sadness, 7 surprise), and where present `ROOT/Landmarks/S005/001/
    S005_001_00000011_landmarks.txt` (68 lines `x y`), used instead of dlib's detection and
    fit (box_source 1). Only the labelled sequences (327 of 593) are read. Each gives its
    last `apex_frames` frames (the apex, labelled with its emotion), its first
    `neutral_frames` frames as neutral (MoDuL: 3 and 3; 0: none) and, with `sequences`, the
    whole sequence as one clip (`train_clips`, for the video models); `contempt=False` drops
    the contempt sequences (7 classes). Subject = S005. CK+ has no split: prep's
    --test_fraction holds subjects out, and the manifest's `folds` are the papers'
    subject-independent folds."""

    name = "ckplus"
    title = "CK+"
    Options = CkPlusOptions
    layout = ("ROOT/cohn-kanade-images/S005/001/S005_001_00000011.png and "
              "ROOT/Emotion/S005/001/S005_001_00000011_emotion.txt (ROOT/Landmarks/... optional)")

    def locate(self):
        self.images, self.emotions = self.find("cohn-kanade-images"), self.find("Emotion")
        self.landmarks = child(self.source, "Landmarks")
        self.classes = tuple(c for c in DATASET_CLASSES["ckplus"] if self.options.contempt or c != "contempt")

    def items(self) -> list[Item]:
        out, all_classes, o = [], DATASET_CLASSES["ckplus"], self.options
        for path in sorted(glob.glob(os.path.join(glob.escape(self.emotions), "*", "*", "*_emotion.txt"))):
            subject, seq = path.split(os.sep)[-3:-1]
            key = f"{subject}/{seq}"
            value = read_numbers(path, 1)
            if value is None or value[0] != round(float(value[0])):
                out.append(bad_item(key, "train", path, "malformed_label", f"{path}: not one whole number"))
                continue
            code = int(value[0])
            if not 0 <= code < len(all_classes):
                out.append(bad_item(key, "train", path, "label_out_of_range", f"{path}: {code} not in 0-7"))
                continue
            if all_classes[code] not in self.classes:
                out.append(bad_item(key, "train", path, f"excluded:{all_classes[code]}"))
                continue
            folder = os.path.join(self.images, subject, seq)
            frames = video.frame_names(folder)
            if not frames:
                out.append(bad_item(key, "train", path, "missing_file", f"no frames in {folder}"))
                continue
            label = self.classes.index(all_classes[code])
            neutral = frames[: max(0, min(o.neutral_frames, len(frames) - o.apex_frames))]
            for name, y in [(n, self.classes.index("neutral")) for n in neutral] + \
                           [(n, label) for n in frames[-o.apex_frames:]]:
                out.append(Item(f"{key}/{name}", "train", y, subject, os.path.join(folder, name)))
            if o.sequences:
                out.append(Item(key, "train_clips", label, subject, folder, "clip"))
        if not any(it.kind != "bad" for it in out):
            raise self.error("no labelled sequence with frames", self.emotions)
        return out

    def face(self, frame: str) -> F.FaceInput:
        """A frame with the landmarks of its Landmarks file, where it has one that parses."""
        lm = None
        if self.landmarks:
            subject, seq, name = frame.split(os.sep)[-3:]
            lm = points(read_numbers(os.path.join(self.landmarks, subject, seq,
                                                  os.path.splitext(name)[0] + "_landmarks.txt"), 136))
        return F.FaceInput(F.load_image(frame), landmarks=lm)

    def load_item(self, item: Item):
        if item.kind == "clip":
            names = video.frame_names(item.source)
            return [self.face(os.path.join(item.source, names[j]))
                    for j in video.even_indices(len(names), self.options.max_frames)]
        return self.face(item.source)


class Bu4dfeReader(ClipReader):
    """BU-4DFE's 2D frames: `ROOT/<F001|M001...>/<Angry|Disgust|Fear|Happy|Sad|Surprise>/`
    folders of frame images (.jpg / .png / .bmp, natural name order), each a clip
    (`train_clips`) labelled with its folder's expression; subject = F001. With
    `apex_frames` k > 0 the middle k frames of each sequence also become images (`train`):
    BU-4DFE's sequences go neutral -> apex -> neutral, so the apex is in the middle. No
    split: prep's --test_fraction holds subjects out."""

    name = "bu4dfe"
    Options = Bu4dfeOptions
    layout = "ROOT/<F001|M001...>/<Angry|Disgust|Fear|Happy|Sad|Surprise>/<frame images>"
    SUBJECT = re.compile(r"[FM]\d+", re.IGNORECASE)

    def locate(self):
        self.subjects = [n for n in subfolders(self.source).values() if self.SUBJECT.fullmatch(n)]
        if not self.subjects:
            raise self.error("no subject folders (F001, M001...)", self.source)

    def items(self) -> list[Item]:
        out, apex = [], self.options.apex_frames
        for subject in self.subjects:
            for label, c in enumerate(self.classes):
                folder = child(os.path.join(self.source, subject), c)
                frames = video.frame_names(folder) if folder else []
                key = f"{subject}/{c}"
                if not frames:
                    if folder:
                        out.append(bad_item(key, "train_clips", folder, "missing_file", f"no frames in {folder}"))
                    continue
                out.append(Item(key, "train_clips", label, subject, folder, "clip"))
                start = max(0, (len(frames) - apex) // 2)
                out += [Item(f"{key}/{n}", "train", label, subject, os.path.join(folder, n))
                        for n in frames[start:start + apex]]
        return out


class MmiReader(ClipReader):
    """The MMI Facial Expression Database's videos: `ROOT/Sessions/<n>/<S001-002>.avi` with the
    session's metadata `<S001-002>.xml` holding `<Metatag Name="Emotion" Value="1"/>` (1 anger,
    2 disgust, 3 fear, 4 happiness, 5 sadness, 6 surprise; the AU annotations `*-oao_aucs.xml`
    are not read). ROOT may be the Sessions folder itself. Each video is a clip
    (`train_clips`); a session without an Emotion value (most: AU-only recordings, image
    sessions) is skipped and counted as `no_emotion` (or `no_video`, `malformed_label`,
    `label_out_of_range`). Subject: the id of a `<subject id="..."/>` element or a Subject
    metatag of the session's XML files (session.xml), else the `S001` of the video's name
    (MMI numbers subjects so), else the session. No split: prep's --test_fraction holds
    subjects out."""

    name = "mmi"
    layout = "ROOT/Sessions/<n>/S001-002.avi with its metadata S001-002.xml (<Metatag Name=\"Emotion\" Value=\"1-6\"/>)"
    SUBJECT = re.compile(r"(S\d+)[-_]", re.IGNORECASE)

    def locate(self):
        named = os.path.basename(os.path.normpath(self.source)).lower() == "sessions"
        self.sessions = self.source if named and os.path.isdir(self.source) else self.find("Sessions")

    @staticmethod
    def metadata(paths: list[str]) -> tuple[str | None, str | None, str]:
        """(Emotion value, subject id, the first unparsable file) of a session's XML files."""
        emotion = subject = None
        broken = ""
        for path in paths:
            try:
                root = ElementTree.parse(path).getroot()
            except (ElementTree.ParseError, OSError):
                broken = broken or path
                continue
            for el in root.iter():
                tag, attrs = el.tag.lower(), {k.lower(): v for k, v in el.attrib.items()}
                name = attrs.get("name", "").lower()
                if tag == "metatag" and name == "emotion":
                    emotion = emotion or attrs.get("value")
                elif (tag == "subject" and attrs.get("id")) or (tag == "metatag" and name in ("subject", "subjectid")):
                    subject = subject or attrs.get("id") or attrs.get("value")
        return emotion, subject, broken

    def items(self) -> list[Item]:
        out = []
        names = sorted((n for n in os.listdir(self.sessions) if os.path.isdir(os.path.join(self.sessions, n))),
                       key=video.natural_key)
        for session in names:
            folder, key = os.path.join(self.sessions, session), f"Sessions/{session}"
            files = sorted(os.listdir(folder))
            videos = [f for f in files if f.lower().endswith(video.VIDEO_EXTS)]
            emotion, subject, broken = self.metadata(
                [os.path.join(folder, f) for f in files if f.lower().endswith(".xml") and "aucs" not in f.lower()])
            code = int(emotion) if emotion and emotion.strip().isdigit() else None
            problem = ("no_video", f"no video in {folder}") if not videos else \
                ("malformed_label", f"{broken} is not XML") if emotion is None and broken else \
                ("no_emotion", f"no Emotion metatag in {folder}") if emotion is None else \
                ("label_out_of_range", f"Emotion {emotion!r} not in 1-6") if code not in range(1, 7) else ()
            if problem:
                out.append(bad_item(key, "train_clips", folder, *problem))
                continue
            match = self.SUBJECT.match(videos[0])
            who = (f"S{int(subject):03d}" if subject.isdigit() else subject) if subject else \
                match.group(1).upper() if match else f"session{session}"
            out += [Item(f"{key}/{v}", "train_clips", code - 1, who, os.path.join(folder, v), "clip") for v in videos]
        if not names:
            raise self.error("no session folders", self.sessions)
        return out


READERS = (CkPlusReader, Bu4dfeReader, MmiReader)
