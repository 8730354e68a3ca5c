"""fergate.weights: each layer kind's conversion against a NumPy forward written from the
source framework's definition (a convolution in OIHW, a grouped 3-D convolution, the
flatten before fc6, BatchNorm in eval mode), every arch's exact source key layout (written
here from the sources' definitions, at small widths) loading with each tensor used once,
wrong files as one-line errors, and `--config.init.weights` loading C3D into VSHNN's 3D CNN
with its convolutions frozen. Parity with PyTorch itself: tools/weights_parity.py."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from fergate import config as config_lib
from fergate import weights
from fergate.errors import UserError
from fergate.models import backbones
from fergate.weights import archs, convert, files
from fergate.weights import init as weights_init

RNG = np.random.default_rng(0)
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "vshnn.py")


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- NumPy forwards (PyTorch semantics)
def np_conv(x, w, b=None, stride=1, pad=1, groups=1):
    """PyTorch's ConvNd on N x C x *S with an O x I/groups x *K kernel: cross-correlation."""
    d = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * d)
    o, ig, *k = w.shape
    out_s = [(x.shape[2 + i] - k[i]) // stride + 1 for i in range(d)]
    y = np.zeros((x.shape[0], o, *out_s), np.float64)
    og = o // groups
    for idx in np.ndindex(*out_s):
        sl = tuple(slice(i * stride, i * stride + kk) for i, kk in zip(idx, k))
        patch = x[(slice(None), slice(None), *sl)]  # N x C x *K
        for g in range(groups):
            pg = patch[:, g * ig : (g + 1) * ig]
            wg = w[g * og : (g + 1) * og]
            y[(slice(None), slice(g * og, (g + 1) * og), *idx)] = np.tensordot(pg, wg, axes=(
                list(range(1, d + 2)), list(range(1, d + 2))))
    return y + (0 if b is None else b.reshape(1, -1, *[1] * d))


def to_last(x):  # N x C x *S -> N x *S x C
    return np.moveaxis(x, 1, -1)


def test_conv2d_oihw_kernel_converts_to_hwio():
    x, w, b = rand(2, 3, 6, 5), rand(4, 3, 3, 3), rand(4)
    want = to_last(np_conv(x, w, b))
    kernel = convert.conv_kernel(w)
    assert kernel.shape == (3, 3, 3, 4)
    got = nn.Conv(4, (3, 3), padding=1).apply({"params": {"kernel": kernel, "bias": b}}, to_last(x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, 2)])
def test_3d_and_grouped_kernels_convert(groups, stride):
    """A 3-D convolution (C3D, 3D-ResNets) and ResNeXt's grouped one: O x I/g x D x H x W ->
    D x H x W x I/g x O, strided with padding 1 on both sides as the source pads."""
    x, w = rand(1, 4, 5, 6, 5), rand(6, 4 // groups, 3, 3, 3)
    want = to_last(np_conv(x, w, stride=stride, groups=groups))
    got = nn.Conv(6, (3, 3, 3), stride, padding=((1, 1),) * 3, feature_group_count=groups, use_bias=False).apply(
        {"params": {"kernel": convert.conv_kernel(w)}}, to_last(x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial", [(3, 2), (1, 2, 2)])
def test_first_dense_after_a_flatten_reorders_its_inputs(spatial):
    """PyTorch flattens C x *S (`view(N, -1)` of NCHW / NCTHW), fergate *S x C: fc6's rows follow."""
    c = 5
    x, w, b = rand(2, c, *spatial), rand(7, c * int(np.prod(spatial))), rand(7)
    want = x.reshape(2, -1) @ w.T + b
    kernel = convert.flattened_dense_kernel(w, spatial, c)
    got = to_last(x).reshape(2, -1) @ kernel + b
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(convert.dense_kernel(w), w.T)


def test_batchnorm_statistics_go_to_batch_stats_in_eval_mode():
    x, weight, bias, mean, var = rand(3, 4, 2, 2), rand(4), rand(4), rand(4), 0.5 + RNG.random(4).astype(np.float32)
    want = (x - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + 1e-5) * weight.reshape(1, -1, 1, 1) \
        + bias.reshape(1, -1, 1, 1)
    sd = {"bn.weight": weight, "bn.bias": bias, "bn.running_mean": mean, "bn.running_var": var,
          "bn.num_batches_tracked": np.array(7, np.int64)}

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(x)

    arch = archs.Arch("bn", lambda k: Net(), lambda p: p[0], "bn.weight", (2, 2, 4), "bn.weight")
    report, _ = convert.match(arch, sd)
    assert report.ok and not report.extra  # the counter is consumed, not extra
    v = convert.to_variables(report, sd, arch)
    assert set(v) == {"params", "batch_stats"}
    np.testing.assert_array_equal(v["batch_stats"]["bn"]["var"], var)
    np.testing.assert_allclose(Net().apply(v, to_last(x)), to_last(want), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- source layouts, small widths
SMALL_VGG = ((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8))


def bn(prefix, n):
    return {f"{prefix}.weight": rand(n), f"{prefix}.bias": rand(n), f"{prefix}.running_mean": rand(n),
            f"{prefix}.running_var": 0.5 + RNG.random(n).astype(np.float32),
            f"{prefix}.num_batches_tracked": np.array(3, np.int64)}


def vgg_layout(face: bool, k=5):
    """torchvision's vgg16 state dict (features.N after its Conv, ReLU, ..., MaxPool Sequential;
    classifier.0 / .3 / .6), or the VGG-Face conversion's (conv1_1 ... conv5_3, fc6-8)."""
    sd, index, cin = {}, 0, 3
    for b, widths in enumerate(SMALL_VGG, 1):
        for i, f in enumerate(widths, 1):
            name = f"conv{b}_{i}" if face else f"features.{index}"
            sd[f"{name}.weight"], sd[f"{name}.bias"] = rand(f, cin, 3, 3), rand(f)
            index, cin = index + 2, f
        index += 1
    for name, i, o in (("0", 7 * 7 * 8, 16), ("3", 16, 16), ("6", 16, k)):
        name = {"0": "fc6", "3": "fc7", "6": "fc8"}[name] if face else f"classifier.{name}"
        sd[f"{name}.weight"], sd[f"{name}.bias"] = rand(o, i), rand(o)
    return sd


def densenet_layout(k=5, growth=4, stem=8, legacy=False):
    sd = {"features.conv0.weight": rand(stem, 3, 7, 7), **bn("features.norm0", stem)}
    c = stem
    for b, n in enumerate((6, 12, 24, 16), 1):
        for i in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            sep = "." if legacy else ""
            sd.update(bn(f"{p}.norm{sep}1", c))
            sd[f"{p}.conv{sep}1.weight"] = rand(4 * growth, c, 1, 1)
            sd.update(bn(f"{p}.norm{sep}2", 4 * growth))
            sd[f"{p}.conv{sep}2.weight"] = rand(growth, 4 * growth, 3, 3)
            c += growth
        if b < 4:
            sd.update(bn(f"features.transition{b}.norm", c))
            sd[f"features.transition{b}.conv.weight"] = rand(c // 2, c, 1, 1)
            c //= 2
    sd.update(bn("features.norm5", c))
    sd["classifier.weight"], sd["classifier.bias"] = rand(k, c), rand(k)
    return sd


SMALL_C3D = ((4,), (4,), (8, 8), (8, 8), (8, 8))


def c3d_layout(k=5):
    sd, cin = {}, 3
    for name, f in zip(("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b"),
                       (4, 4, 8, 8, 8, 8, 8, 8)):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = rand(f, cin, 3, 3, 3), rand(f)
        cin = f
    for name, i, o in (("fc6", 8 * 1 * 4 * 4, 16), ("fc7", 16, 16), ("fc8", 16, k)):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = rand(o, i), rand(o)
    return sd


def resnet3d_layout(layers, widths, cardinality, k=5):
    """3D-ResNets' names: conv1, bn1, layerS.I.{conv,bn}{1,2[,3]}, layerS.I.downsample.{0,1}, fc."""
    sd = {"conv1.weight": rand(8, 3, 7, 7, 7), **bn("bn1", 8)}
    cin = 8
    for s, (n, planes) in enumerate(zip(layers, widths), 1):
        for i in range(n):
            p, stride = f"layer{s}.{i}", 2 if (s > 1 and i == 0) else 1
            if cardinality:
                mid, out = cardinality * planes // 32, 2 * planes
                sd[f"{p}.conv1.weight"] = rand(mid, cin, 1, 1, 1)
                sd[f"{p}.conv2.weight"] = rand(mid, mid // cardinality, 3, 3, 3)
                sd[f"{p}.conv3.weight"] = rand(out, mid, 1, 1, 1)
                sd.update({**bn(f"{p}.bn1", mid), **bn(f"{p}.bn2", mid), **bn(f"{p}.bn3", out)})
            else:
                out = planes
                sd[f"{p}.conv1.weight"], sd[f"{p}.conv2.weight"] = rand(out, cin, 3, 3, 3), rand(out, out, 3, 3, 3)
                sd.update({**bn(f"{p}.bn1", out), **bn(f"{p}.bn2", out)})
            if stride != 1 or cin != out:
                sd[f"{p}.downsample.0.weight"] = rand(out, cin, 1, 1, 1)
                sd.update(bn(f"{p}.downsample.1", out))
            cin = out
    sd["fc.weight"], sd["fc.bias"] = rand(k, cin), rand(k)
    return sd


def small(name: str) -> archs.Arch:
    """The arch at the widths of the layouts above (names and structure unchanged)."""
    a = archs.ARCHS[name]
    build = {
        "vgg16": lambda k: archs.VGGNet(k, "imagenet", SMALL_VGG, (16, 16)),
        "vggface": lambda k: archs.VGGNet(k, "vggface", SMALL_VGG, (16, 16)),
        "densenet121": lambda k: archs.DenseNetNet(k, growth=4, stem=8),
        "c3d": lambda k: archs.C3DNet(k, SMALL_C3D, (16, 16)),
        "resnet3d18": lambda k: archs.ResNet3DNet(k, backbones.ResNet3D((2, 2, 2, 2), (8, 8, 16, 16), 0, stem=8)),
        "resnext3d101": lambda k: archs.ResNet3DNet(k, backbones.ResNet3D((3, 4, 23, 3), (32, 32, 64, 64), 4, stem=8)),
    }[name]
    flat = {"c3d": {("fc6",): ((1, 4, 4), 8)}}.get(name, {k: (s, 8) for k, (s, _) in a.flattened.items()})
    return dataclasses.replace(a, build=build, flattened=flat)


LAYOUTS = {
    "vgg16": lambda: vgg_layout(False), "vggface": lambda: vgg_layout(True), "densenet121": densenet_layout,
    "c3d": c3d_layout, "resnet3d18": lambda: resnet3d_layout((2, 2, 2, 2), (8, 8, 16, 16), 0),
    "resnext3d101": lambda: resnet3d_layout((3, 4, 23, 3), (32, 32, 64, 64), 4),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_every_tensor_of_the_source_layout_is_used_once(tmp_path, name, suffix):
    sd = LAYOUTS[name]()
    path = str(tmp_path / f"w{suffix}")
    files.write_safetensors(path, sd) if suffix == ".safetensors" else np.savez(path, **sd)
    assert archs.detect(sd) == name  # the layout is recognised from its names
    arch = small(name)
    report, _ = convert.match(arch, files.read(path))
    assert report.ok, report.error(path)
    counters = [k for k in sd if k.endswith("num_batches_tracked")]
    assert sorted(e.source for e in report.used) == sorted(set(sd) - set(counters))  # each once
    variables = weights.load(path, arch)
    leaves = jax.tree.leaves(variables)
    assert len(leaves) == len(sd) - len(counters) and report.num_classes == 5
    if suffix == ".npz" and name not in ("densenet121", "resnext3d101"):  # features at the native input size
        # (the two deepest compile for seconds; tools/weights_parity.py runs them against PyTorch)
        x = np.zeros((1, *arch.input_shape), np.uint8)
        assert weights.features(arch, variables, x).shape[0] == 1


def test_older_densenet_names_read_as_torchvision_does(tmp_path):
    """torchvision's published densenet121-a639ec97.pth says `denselayer1.norm.1.weight`."""
    path = str(tmp_path / "d.safetensors")
    files.write_safetensors(path, densenet_layout(legacy=True))
    report, _ = convert.match(small("densenet121"), files.read(path))
    assert report.ok and archs.detect(files.read(path)) == "densenet121"


def test_vgg_fc6_loads_flattened_in_fergate_order(tmp_path):
    sd = vgg_layout(True)
    path = str(tmp_path / "f.safetensors")
    files.write_safetensors(path, sd)
    v = weights.load(path, small("vggface"))
    np.testing.assert_array_equal(v["params"]["mlp"]["dense0"]["kernel"],
                                  convert.flattened_dense_kernel(sd["fc6.weight"], (7, 7), 8))
    np.testing.assert_array_equal(v["params"]["convs"]["conv2_1"]["kernel"], convert.conv_kernel(sd["conv2_1.weight"]))


@pytest.mark.parametrize("change,named", [
    (lambda sd: sd.pop("conv3a.weight"), "tensor conv3a.weight missing"),
    (lambda sd: sd.update({"fc9.weight": rand(2, 2)}), "tensor fc9.weight is not part of the c3d layout"),
    (lambda sd: sd.update({"conv2.bias": rand(5)}), "tensor conv2.bias has shape (5,), the c3d layout (4,)"),
])
def test_a_wrong_file_is_one_line_naming_the_tensor(tmp_path, change, named):
    sd = c3d_layout()
    change(sd)
    path = str(tmp_path / "c.safetensors")
    files.write_safetensors(path, sd)
    with pytest.raises(UserError) as e:
        weights.load(path, small("c3d"))
    assert named in str(e.value) and "\n" not in str(e.value)
    report, lines = weights.inspect(path, "c3d")
    assert not report.ok and lines[-1].startswith("not loadable")


def test_unreadable_or_unknown_files(tmp_path):
    junk = tmp_path / "x.safetensors"
    junk.write_bytes(b"\xff" * 4)
    with pytest.raises(UserError, match="not a safetensors file"):
        weights.load(str(junk))
    other = str(tmp_path / "o.npz")
    np.savez(other, **{"encoder.weight": rand(2, 2)})
    with pytest.raises(UserError, match="follow none of the layouts"):
        weights.load(other)
    pth = tmp_path / "m.pth"
    pth.write_bytes(b"x")
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="needs PyTorch"):
            weights.load(str(pth))


def test_safetensors_round_trip_keeps_dtypes(tmp_path):
    import ml_dtypes

    t = {"a": rand(2, 3), "b": np.arange(4, dtype=np.int64), "c": rand(3).astype(ml_dtypes.bfloat16)}
    path = str(tmp_path / "t.safetensors")
    files.write_safetensors(path, t)
    back = files.read(path)
    for k in t:
        assert back[k].dtype == t[k].dtype
        np.testing.assert_array_equal(back[k], t[k])


def test_c3d_pool5_pads_as_the_port():
    """The port's pool5 (2 x 2 x 2, padding (0, 1, 1)) on 7 x 7: windows (pad, 0), (1, 2), ..."""
    x = jax.random.normal(jax.random.key(0), (1, 2, 7, 7, 1))
    y = backbones.max_pool3d(x, (2, 2, 2))
    assert y.shape == (1, 1, 4, 4, 1)
    np.testing.assert_allclose(y[0, 0, 0, 0, 0], x[0, :, 0, 0, 0].max())
    np.testing.assert_allclose(y[0, 0, 1, 1, 0], x[0, :, 1:3, 1:3, 0].max())


# ----------------------------------------------------------------------------- training from the weights
def test_init_weights_load_c3d_into_vshnn_frozen(tmp_path, monkeypatch):
    """`--config.init.weights=c3d.safetensors`: the model's 3D CNN holds the file's
    convolutions before any step (its first evaluation is the loaded model's), a training
    step leaves them as they are (freeze_convs) while the FC layers move, and the run
    records the file's SHA-256."""
    from fergate.train.program import Program, resolve

    smoke = ((16,), (32,), (64,), (128,))
    arch = dataclasses.replace(archs.ARCHS["c3d"], build=lambda k: archs.C3DNet(k, smoke, (16, 16)),
                               flattened={("fc6",): ((2, 7, 7), 128)})
    monkeypatch.setitem(archs.ARCHS, "c3d", arch)
    _, shapes = convert.network_shapes(arch, 5)
    sd = {e.source: rand(*e.source_shape) * 0.1 for e in convert.entries(arch, shapes)}
    path = str(tmp_path / "c3d.safetensors")
    files.write_safetensors(path, sd)
    cfg = config_lib.load(CONFIG + ":variant=c3d,smoke=True",
                          [f"--config.init.weights={path}", "--config.vshnn.freeze_convs=True"])
    with pytest.raises(UserError, match="backbone cnn3d is frozen and never trained"):
        cfg2 = config_lib.load(CONFIG + ":variant=c3d,smoke=True", ["--config.vshnn.freeze_convs=True"])
        resolve(cfg2, None)
        p2 = Program(cfg2)
        weights_init.load_into(p2, p2.new_state(), str(tmp_path))
    resolve(cfg, None)
    weights_init.check(cfg)
    prog = Program(cfg)
    state = weights_init.load_into(prog, prog.new_state(), str(tmp_path))
    want = weights.load(path)["params"]["convs"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["c3d_convs"]), want)
    batch = prog.example
    logits = prog.predict(state, batch)["logits"]
    variables = {"params": {**jax.device_get(state.params), "c3d_convs": want}, **state.model_state}
    np.testing.assert_allclose(logits, prog.module.apply(variables, batch, train=False)["logits"], rtol=1e-5)
    before = jax.device_get(state.params)
    state, _ = prog.train_step(state, batch)
    after = jax.device_get(state.params)
    jax.tree.map(np.testing.assert_array_equal, after["c3d_convs"], before["c3d_convs"])
    assert not np.array_equal(after["scene"]["kernel"], before["scene"]["kernel"])
    record = json.load(open(tmp_path / weights_init.RECORD))
    assert record == [{"file": "c3d.safetensors", "sha256": files.sha256(path), "arch": "c3d",
                       "backbones": ["cnn3d"]}]


@pytest.mark.parametrize("spec,classes", [
    ("thin.py:task=fer,variant=thin,paper=True", {"vgg16": 1000, "vggface": 2622}),
    ("thin.py:task=fer,variant=baseline,paper=True,expression=vggface", {"vggface": 2622}),
    ("vshnn.py:variant=c3d,paper=True", {"c3d": 487}),
    ("vshnn.py:variant=resnet3d18,paper=True", {"resnet3d18": 700}),
    ("vshnn.py:variant=resnext3d101,paper=True", {"resnext3d101": 400}),
    ("vshnn.py:variant=frames,paper=True", {"densenet121": 1000}),
])
def test_the_paper_presets_backbones_have_the_published_shapes(spec, classes):
    """Each backbone of a paper=True preset has, subtree by subtree, the shapes of the
    published network's variables (abstract: nothing is allocated)."""
    from fergate.models import family
    from fergate.train.program import Program, resolve

    cfg = config_lib.load(os.path.join(os.path.dirname(CONFIG), spec))
    resolve(cfg, None)
    backbones_ = family(cfg.model).backbones(cfg)
    assert backbones_ and {a for b in backbones_.values() for a in b.archs} == set(classes)
    state = Program(cfg).abstract_state
    for b in backbones_.values():
        (arch,) = b.archs
        _, shapes = convert.network_shapes(archs.ARCHS[arch], classes[arch])
        for src, dst in b.places.items():
            for collection, tree in shapes.items():
                model = state.params if collection == "params" else state.model_state[collection]
                sub, want = weights_init._get(tree, src), weights_init._get(model, dst)
                assert sub is not None and want is not None, (arch, src, dst, collection)
                assert jax.tree.map(np.shape, sub) == jax.tree.map(np.shape, want), (arch, src, dst)
    assert cfg.vshnn.freeze_convs if cfg.model == "vshnn" and cfg.variant != "frames" else True


def test_the_command_line_names_every_arch():
    from fergate.commands import weights as command

    assert command.ARCH_NAMES == tuple(archs.ARCHS)


def test_thin_paper_preset_is_section_4_3_on_published_weights():
    """VGG-16 at 224, Adam at 1e-5, the identity network VGG-Face's (no stage 1, frozen,
    c_sigma over its 2622 identities); the identity network has no stage 1 to train."""
    thin_cfg = os.path.join(os.path.dirname(CONFIG), "thin.py")
    c = config_lib.load(thin_cfg + ":task=fer,variant=thin,paper=True")
    assert (c.input.image_size, c.optim.lr, c.thin.backbone, c.thin.endo_norm) == (224, 1e-5, "vgg16", "imagenet")
    assert c.thin.exo_classes == (2622,) and c.thin.exo_hidden == (4096, 4096) and not c.pretrain.configs
    assert c.init.params_from == () and c.optim.frozen == ("exo_encoder_identity", "exo_classifier_identity")
    assert config_lib.load(thin_cfg + ":task=fer,variant=thin,paper=True,expression=vggface").thin.endo_norm == \
        "vggface"
    with pytest.raises(UserError, match="paper=True is THIN's FER set-up"):
        config_lib.load(thin_cfg + ":task=fer,variant=exo,paper=True")
