import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fergate.data import schema

u8 = lambda shape: hnp.arrays(np.uint8, shape)  # noqa: E731
f32 = lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-1e6, 1e6, width=32))  # noqa: E731

record = st.fixed_dictionaries(
    {
        "label": st.integers(0, 10**6),
        "label_name": st.text(max_size=20),
        "subject": st.text(max_size=20),
        "source": st.text(max_size=40),
        "face": st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3])).flatmap(u8),
        "landmarks": f32((68, 2)),
        "iod": st.floats(0, 1e4, allow_nan=False),
        "patches": st.tuples(st.integers(1, 5), st.integers(1, 6)).flatmap(lambda s: u8((s[0], s[1], s[1]))),
        "identity": f32((128,)),
        "clip": st.tuples(st.integers(1, 4), st.integers(1, 8), st.sampled_from([1, 3])).flatmap(
            lambda s: u8((s[0], s[1], s[1], s[2]))),
        "clip_landmarks": st.integers(1, 4).flatmap(lambda t: f32((t, 68, 2))),
        "exo_label": st.integers(-5, 5),
        "detector_score": st.floats(-10, 10, allow_nan=False),
    }
)


def _equal(a, b):
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None)
@given(rec=record, compress=st.booleans())
def test_every_field_round_trips_losslessly(rec, compress):
    out = schema.decode(schema.encode(rec, compress=compress))
    assert set(out) == set(rec)
    for k in rec:
        assert _equal(rec[k], out[k]), k


def test_decode_reads_only_requested_fields():
    data = schema.encode({"label": 3, "face": np.zeros((4, 4, 1), np.uint8), "subject": "s"})
    assert set(schema.decode(data, ("label", "subject"))) == {"label", "subject"}
    with pytest.raises(schema.SchemaError, match="lacks fields"):
        schema.decode(data, ("patches",))


def test_other_schema_version_is_rejected_clearly():
    data = bytearray(schema.encode({"label": 1}))
    data[3] = schema.SCHEMA_VERSION + 1
    with pytest.raises(schema.SchemaError, match=f"schema version {schema.SCHEMA_VERSION + 1}.*re-run"):
        schema.decode(bytes(data))
    with pytest.raises(schema.SchemaError, match="not a fergate record"):
        schema.decode(b"\x08\x01" + bytes(20))


def test_documented_fields_are_type_checked():
    with pytest.raises(schema.SchemaError, match="landmarks.*float32"):
        schema.encode({"landmarks": np.zeros((68, 2), np.float64)})
    with pytest.raises(schema.SchemaError, match="landmarks.*shape"):
        schema.encode({"landmarks": np.zeros((5, 2), np.float32)})
    with pytest.raises(schema.SchemaError, match="label.*int"):
        schema.encode({"label": "happy"})
