"""Augmentation in the jitted step: each op on the device against the same op on the host
(same inputs, same parameters), the batch's per-example draws, the step's key, and the
device prefetch's checkpoint position."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fergate.data import augment
from fergate.data import fields as F
from fergate.data import pipeline as P
from fergate.data.device import KeyRng
from fergate.data.landmarks import MIRROR_68


@pytest.fixture(scope="module")
def record(photos):
    """A real face photo as a 96 x 96 RGB `face`, grey `patches` cut from it, landmarks
    spread over the face, an `iod`, a 2-frame `clip` and its landmarks."""
    photo = photos["astronaut"]
    face = cv2.resize(photo[:300, 100:400], (96, 96), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(0)
    return {"face": face, "landmarks": rng.uniform(0, 95, (68, 2)).astype(np.float32), "iod": np.float32(30),
            "patches": cv2.resize(grey, (30, 68 * 30), interpolation=cv2.INTER_AREA).reshape(68, 30, 30),
            "clip": np.stack([face[:64, :80], face[32:, 16:]]),
            "clip_landmarks": rng.uniform(0, 63, (2, 68, 2)).astype(np.float32), "label": np.int32(3)}


def _both(op, rec, params):
    """(host result, device result as numpy) of `op` on `rec` with `params`."""
    host = op.apply(rec, params)
    dev = jax.jit(op.apply)(jax.tree.map(jnp.asarray, rec), jax.tree.map(jnp.asarray, params))
    return host, jax.device_get(dev)


def _close_pixels(a, b, mean: float, share: float, levels: int = 2):
    """uint8 images within `levels` grey levels but on at most `share` of the pixels, and
    `mean` levels apart on average."""
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    assert a.dtype == b.dtype == np.uint8 and d.mean() < mean and (d > levels).mean() <= share, \
        (d.mean(), (d > levels).mean(), d.max())


def test_a_flip_on_the_device_is_the_hosts_exactly(record):
    host, dev = _both(augment.Flip(p=1.0), record, True)
    for k in record:
        np.testing.assert_array_equal(dev[k], host[k], err_msg=k)
    # the mirror image of the left eye's outer corner (36) is the right eye's (45)
    np.testing.assert_array_equal(dev["landmarks"][45], [95 - record["landmarks"][36, 0], record["landmarks"][36, 1]])
    np.testing.assert_array_equal(dev["patches"][48], record["patches"][MIRROR_68[48]][:, ::-1])
    np.testing.assert_array_equal(dev["clip"], record["clip"][:, :, ::-1])
    _, kept = _both(augment.Flip(p=1.0), record, False)
    for k in record:
        np.testing.assert_array_equal(kept[k], record[k])


@pytest.mark.parametrize("degrees", [7.3, -10.0])
def test_a_rotation_on_the_device_is_opencvs_within_a_level(record, degrees):
    host, dev = _both(augment.Rotate(10), record, degrees)
    np.testing.assert_allclose(dev["landmarks"], host["landmarks"], atol=1e-4)
    np.testing.assert_allclose(dev["clip_landmarks"], host["clip_landmarks"], atol=1e-4)
    for k in ("face", "patches", "clip"):  # OpenCV samples at 1/32 pixel with fixed-point weights
        _close_pixels(dev[k], host[k], mean=0.5, share=0.002, levels=3)
    assert dev["iod"] == host["iod"] and dev["label"] == 3


@pytest.mark.parametrize("params", [(1.15, -12.3), (0.8, 17.0)])
def test_brightness_contrast_on_the_device_is_the_hosts(record, params):
    host, dev = _both(augment.BrightnessContrast(), record, params)
    for k in ("face", "patches", "clip"):  # float32 here, float64 on the host: a level where they round apart
        _close_pixels(dev[k], host[k], mean=0.01, share=0.0, levels=1)
    np.testing.assert_array_equal(dev["landmarks"], record["landmarks"])


@pytest.mark.parametrize("params", [(4.2, 1.17), (-4.9, 0.81)])
def test_hue_saturation_on_the_device_is_opencvs_hsv(record, params):
    host, dev = _both(augment.HueSaturation(), record, params)
    assert not np.array_equal(host["face"], record["face"])
    _close_pixels(dev["face"], host["face"], mean=0.5, share=0.005)
    _close_pixels(dev["clip"], host["clip"], mean=0.5, share=0.005)
    np.testing.assert_array_equal(dev["patches"], record["patches"])  # grey: untouched


def test_a_crop_on_the_device_is_the_hosts_exactly(record):
    """The family's random crop (the attention CNN's) cuts the same window on the device
    as on the host, the landmarks shifted with it; the evaluation's centre crop is the
    window at the middle offset."""
    rec = {k: record[k] for k in ("face", "landmarks", "iod", "label")}
    op = augment.Crop((80, 72), (96, 96))
    host, dev = _both(op, rec, (5, 11))
    for k in rec:
        np.testing.assert_array_equal(dev[k], host[k], err_msg=k)
    np.testing.assert_array_equal(dev["face"], record["face"][5:85, 11:83])
    np.testing.assert_allclose(dev["landmarks"], record["landmarks"] - [11, 5], atol=1e-5)
    centre = P.CenterCrop((80, 72)).map(dict(rec))
    np.testing.assert_array_equal(centre["face"], op.apply(rec, (8, 12))["face"])
    # every offset of the window can be drawn, none outside it
    ys, xs = jax.device_get(jax.vmap(lambda k: op.draw(KeyRng(k)))(jax.random.split(jax.random.key(0), 2000)))
    assert set(ys.tolist()) == set(range(17)) and set(xs.tolist()) == set(range(25))
    with pytest.raises(ValueError, match=r"expects \(96, 96\)"):
        op.apply({"face": record["face"][:90]}, (0, 0))


def test_the_attention_cnn_crops_in_the_step():
    """The attention CNN's random crop joins its ops in the step: the host sends the whole
    record-size face, the step compiles for it and feeds the model its crop size."""
    from fergate import config as C
    from fergate import models
    from fergate.train.data import resolve
    from fergate.train.program import Program

    cfg = C.load("configs/attention.py:smoke=True", ["--config.input.batch_size=4"])
    fam = models.family("attention")
    assert [op.name for op in fam.device_ops(cfg)] == ["crop", "flip"]
    assert [type(t).__name__ for t in fam.host_transforms(cfg, True)] == ["ResizeFace"]
    assert [type(t).__name__ for t in fam.transforms(cfg, True)] == ["ResizeFace", "Crop", "Flip"]
    resolve(cfg, None)
    prog = Program(cfg)
    assert prog.train_example["face"].shape == (4, 160, 125, 1) and prog.example["face"].shape == (4, 144, 112, 1)
    aug = jax.eval_shape(prog.augment, prog.train_example, 0)
    assert aug["face"].shape == (4, 144, 112, 1) and aug["landmarks"].shape == (4, 68, 2)
    jax.eval_shape(prog.train_step, prog.abstract_state, prog.train_example)


def test_a_batch_is_augmented_example_by_example_from_its_key(record):
    """`on_device` over a batch: example i gets the parameters op j draws from
    fold_in(split(key, n)[i], j), applied as the host applies them; examples differ."""
    ops = augment.parse("flip|rotate(10)|brightness_contrast")
    n, key = 6, jax.random.key(7)
    batch = {k: np.stack([record[k]] * n) for k in ("face", "landmarks", "iod", "patches", "label")}
    out = jax.device_get(jax.jit(lambda b, k: augment.on_device(ops, b, k))(batch, key))
    flips = []
    for i, k in enumerate(jax.random.split(key, n)):
        rec = {f: v[i] for f, v in batch.items()}
        for j, op in enumerate(ops):
            params = jax.tree.map(lambda x: x.item(), op.draw(KeyRng(jax.random.fold_in(k, j))))  # Python values
            rec = op.apply(rec, params)
        flips.append(bool(jax.device_get(ops[0].draw(KeyRng(jax.random.fold_in(k, 0))))))
        np.testing.assert_allclose(out["landmarks"][i], rec["landmarks"], atol=1e-3)
        for k in ("face", "patches"):  # a rotation's level or two, amplified by the contrast
            _close_pixels(out[k][i], rec[k], mean=0.5, share=0.01, levels=3)
    assert 0 < sum(flips) < n  # a draw per example, not one per batch
    assert len({out["face"][i].tobytes() for i in range(n)}) == n
    np.testing.assert_array_equal(out["label"], batch["label"])


def test_draws_follow_the_ops_distributions():
    """The device draws of `flip(0.25)`, `rotate(10)` and `brightness_contrast(20, 0.2)`
    over many keys: the flip's rate, the ranges, and their spread (uniform)."""
    keys = jax.random.split(jax.random.key(0), 4000)

    def draw(op):
        return jax.device_get(jax.vmap(lambda k: op.draw(KeyRng(k)))(keys))

    assert abs(draw(augment.Flip(0.25)).mean() - 0.25) < 0.03
    angles = draw(augment.Rotate(10))
    assert -10 <= angles.min() < -9.8 and 9.8 < angles.max() <= 10 and abs(angles.std() - 20 / 12**0.5) < 0.3
    c, b = draw(augment.BrightnessContrast(20, 0.2))
    assert 0.8 <= c.min() < 0.81 and 1.19 < c.max() <= 1.2 and -20 <= b.min() < -19.5 and 19.5 < b.max() <= 20


def test_the_family_runs_its_ops_in_the_step_or_all_on_the_host():
    """Ops that can all run on the device leave the host pipeline (its maps come first);
    one that cannot keeps every op on the host, in order (the extension test's family)."""
    from fergate import config as C
    from fergate import models

    cfg = C.load("configs/thin.py:task=fer")
    fam = models.family("thin")
    assert [op.name for op in fam.device_ops(cfg)] == ["flip", "rotate", "brightness_contrast", "hue_saturation"]
    assert [type(t).__name__ for t in fam.host_transforms(cfg, True)] == ["ResizeFace"]
    assert fam.host_transforms(cfg, False) == fam.transforms(cfg, False)

    class HostOnly(augment.Op):
        name = "host_only"

    ops = augment.parse("flip") + [HostOnly()]
    assert augment.runs_on_device(ops[:1]) and not augment.runs_on_device(ops) and not augment.runs_on_device([])


def test_the_step_draws_from_its_own_key(sample_data):
    """The train step's augmentation is a function of (seed, step): again at the same step
    (a resumed run), another at the next."""
    from fergate import config as C
    from fergate.train.data import DataPlan
    from fergate.train.program import Program

    cfg = C.load("configs/modul.py:smoke=True", [f"--config.data.dir={sample_data}", "--config.input.batch_size=4",
                                                  "--config.data.augment=flip|rotate(10)|brightness_contrast"])
    plan = DataPlan.build(cfg)
    prog = Program(cfg)
    assert [op.name for op in prog.ops] == ["flip", "rotate", "brightness_contrast"]
    batch = next(iter(plan.input_pipeline("train", train=True)))
    assert batch["face"].shape == (4, 64, 64, 1)  # resized on the host, not yet augmented
    aug = jax.jit(prog.augment)
    a, again, other = (jax.device_get(aug(batch, s)) for s in (5, 5, 6))
    for k in batch:
        np.testing.assert_array_equal(a[k], again[k])
    assert not np.array_equal(a["face"], other["face"]) and not np.array_equal(a["face"], batch["face"])


def test_device_prefetch_saves_the_position_of_the_batches_read(sample_data):
    """A batch fetched ahead; the checkpointed state is after the batches `next`
    returned, so a restored iterator goes on with the first one no step has read."""
    import json

    from fergate.train.prefetch import DevicePrefetch

    def stream():
        return iter(P.make_dataset(sample_data, "train", ("landmarks",), 4, seed=2))

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    feed = DevicePrefetch(stream(), sharding)
    read = [jax.device_get(next(feed)) for _ in range(3)]
    assert len(feed.ahead) == 1  # double buffering: the batch a step reads, and the next on its way
    again = stream()
    again.set_state(json.loads(feed.get_state()))
    ref = stream()
    expected = [next(ref) for _ in range(4)]
    for a, b in zip(read, expected):
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
    np.testing.assert_array_equal(next(again)["landmarks"], expected[3]["landmarks"])


def test_the_host_cache_serves_what_a_read_gives(sample_data):
    """Load's cache: the second read of a record is the first's (mask per element), and
    nothing is cached past the budget."""
    files = P.split_files(sample_data, "train")
    maps = [P.ResizeFace((64, 64), grey=True)]
    cached = P.Load(files, ("face", "landmarks"), maps=maps, keep=("face", "landmarks"), cache_mb=64)
    none = P.Load(files, ("face", "landmarks"), maps=maps, keep=("face", "landmarks"), cache_mb=0)
    first, second, padding = cached.map((3, True)), cached.map((3, True)), cached.map((3, False))
    assert len(cached._cache) == 1 and not none._cache and none.map((3, True)) is not None
    assert set(first) == {"face", "landmarks", "label", "mask"} and first["face"].shape == (64, 64, 1)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    assert first["mask"] == 1 and padding["mask"] == 0
    np.testing.assert_array_equal(first["face"], F.resize(P.Load(files, ("face",)).map((3, True)), "face", (64, 64),
                                                          True)["face"])
