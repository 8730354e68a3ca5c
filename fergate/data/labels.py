"""Label sets: every dataset's class names in its own order and coding, in one place, and
the mapping of one dataset's classes onto another list (training on mixed datasets).

Class names are the datasets' own words; `canonical` folds the spellings (angry / anger,
happy / happiness, ...) onto one name per expression, so that two datasets' classes can be
matched by name. The readers (data_prep.readers) take their classes from `DATASET_CLASSES`;
the index of a name there is the label written into the records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fergate.data import compound
from fergate.errors import UserError

#: The 7 basic expressions (6 of Ekman + neutral) in the order fergate's own data uses.
BASIC7 = ("neutral", "happiness", "anger", "sadness", "fear", "disgust", "surprise")

#: dataset -> its class names, indexed by the label fergate writes (the dataset's own codes
#: where they start at 0; RAF-DB's 1-7 shifted to 0-6; AffectNet's 0-10 cut at 7 or 8).
DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    # CK+ Emotion/*.txt: 0-7 (0 neutral: the first frames of a sequence, not a label file's value)
    "ckplus": ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"),
    # RAF-DB basic: list_patition_label.txt codes 1-7
    "rafdb": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
    # AffectNet expression 0-10: 0-7 are expressions (8 none, 9 uncertain, 10 no face: never kept)
    "affectnet": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
    # FER-2013 fer2013.csv emotion 0-6
    "fer2013": ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
    # SFEW 2.0 / AFEW: the emotion folders, sorted
    "sfew": ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"),
    "afew": ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"),
    # ExpW label.lst: 0-6
    "expw": ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
    # BU-4DFE: the six expression folders of each subject, sorted
    "bu4dfe": ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise"),
    # MMI: the session metadata's Emotion code 1-6, shifted to 0-5
    "mmi": ("anger", "disgust", "fear", "happiness", "sadness", "surprise"),
    # iCV-MEFED: neutral and the 49 complementary_dominant pairs, 7 (c - 1) + d (fergate.data.compound)
    "icv_mefed": compound.CLASSES,
    "sample": BASIC7,
}

#: spelling -> canonical expression name (lower case keys)
SYNONYMS: dict[str, str] = {
    "neutral": "neutral", "neu": "neutral",
    "happy": "happiness", "happiness": "happiness", "joy": "happiness", "hap": "happiness",
    "angry": "anger", "anger": "anger", "ang": "anger",
    "sad": "sadness", "sadness": "sadness",
    "fear": "fear", "fearful": "fear", "scared": "fear",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise",
    "contempt": "contempt", "contemptuous": "contempt",
}

#: a mapping's target that drops the class from training instead of mapping it
DROP = "-"


def canonical(name: str) -> str:
    """A class name in canonical spelling (`SYNONYMS`), or itself in lower case."""
    key = str(name).strip().lower()
    return SYNONYMS.get(key, key)


def parse_mapping(entries: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """"FROM=TO" entries (or a dict) -> {canonical FROM: TO}; TO `-` drops the class."""
    if isinstance(entries, Mapping):
        return {canonical(k): str(v) for k, v in entries.items()}
    out = {}
    for e in entries:
        src, eq, dst = str(e).partition("=")
        if not eq or not src.strip() or not dst.strip():
            raise UserError(f"label mapping {e!r}: expected FROM=TO (a class name, or TO '-' to drop it)")
        out[canonical(src)] = dst.strip()
    return out


#: how a mapping is given, in `relabel`'s error: a config's, by default
CONFIG_MAPPING = "data.label_map=('{name}=CLASS',) or drop it with '{name}=-'"


def relabel(classes: Sequence[str], target: Sequence[str], mapping: Mapping[str, str] | None = None,
            what: str = "the data", how: str = CONFIG_MAPPING) -> list[int]:
    """For each of `classes`, its index in `target` (-1: dropped), matched by canonical name
    after `mapping` ({canonical name: target name or DROP}). A class that matches nothing is a
    UserError naming it and the ways out (`how`, with the class's `{name}`)."""
    mapping = dict(mapping or {})
    index = {canonical(t): i for i, t in enumerate(target)}
    out, missing = [], []
    for c in classes:
        key = canonical(c)
        dst = mapping.get(key, c)
        if dst == DROP:
            out.append(-1)
        elif canonical(dst) in index:
            out.append(index[canonical(dst)])
        else:
            out.append(-1)
            missing.append(c if dst == c else f"{c} (mapped to {dst})")
    if missing:
        raise UserError(f"{what}: class {', '.join(missing)} is not one of {', '.join(target)}; map it with "
                        + how.format(name=canonical(missing[0].split(" ")[0])))
    return out
