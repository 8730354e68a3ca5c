"""Compound (dominant + complementary) expression labels of iCV-MEFED and the micro-emotion
network (Guo et al., FG 2017, section III-B).

A label "c_d" names a complementary emotion c and a dominant one d, each 1-7 in the order of
`EMOTIONS`; "N_N" is neutral. They become one class n = 7 (c - 1) + d, neutral 0: 50 classes
in [0, 49], one to one. Class names read "<complementary>_<dominant>" (e.g. `happy_surprise`:
surprise dominant, happiness complementary); c = d is the pure emotion.
"""

from __future__ import annotations

#: iCV-MEFED's emotion order (the numbers of its labels, 1-7)
EMOTIONS = ("angry", "contempt", "disgust", "fear", "happy", "sad", "surprise")
NEUTRAL = "neutral"
NUM_CLASSES = 1 + len(EMOTIONS) ** 2


def compound_label(c: int, d: int) -> int:
    """n = 7 (c - 1) + d for complementary c and dominant d in 1..7."""
    k = len(EMOTIONS)
    if not (1 <= c <= k and 1 <= d <= k):
        raise ValueError(f"compound label {c}_{d}: both must be in 1..{k}")
    return k * (c - 1) + d


def compound_pair(n: int) -> tuple[int, int] | None:
    """The inverse of `compound_label`: (c, d), or None for neutral (0)."""
    if not 0 <= n < NUM_CLASSES:
        raise ValueError(f"compound class {n}: must be in [0, {NUM_CLASSES - 1}]")
    if n == 0:
        return None
    c, d = divmod(n - 1, len(EMOTIONS))
    return c + 1, d + 1


def parse_label(text: str) -> int:
    """An iCV-MEFED label ("3_6", "N_N") -> its class; ValueError for anything else."""
    c, sep, d = text.strip().partition("_")
    if not sep:
        raise ValueError(f"label {text!r} is not complementary_dominant (e.g. 3_6, N_N)")
    if c.upper() == "N" and d.upper() == "N":
        return 0
    try:
        return compound_label(int(c), int(d))
    except ValueError:
        raise ValueError(f"label {text!r} is not complementary_dominant with both in 1..{len(EMOTIONS)} "
                         "(or N_N)") from None


def class_name(n: int) -> str:
    pair = compound_pair(n)
    return NEUTRAL if pair is None else f"{EMOTIONS[pair[0] - 1]}_{EMOTIONS[pair[1] - 1]}"


#: the 50 class names in class order
CLASSES = tuple(class_name(n) for n in range(NUM_CLASSES))
