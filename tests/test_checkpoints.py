"""load_checkpoint / export_state_dict: every layout round-trips exactly, bad checkpoints fail clearly.

Foreign files are written from the documented layouts (tests/_checkpoint_fixtures.py) in each
framework's container, then loaded into a fresh reference model: state dicts must be identical and
logits bitwise equal (atol = rtol = 0: loading copies tensors, nothing is recomputed).
"""
import pickle

import numpy as np
import pytest
import torch

import slowfast_kernels
import slowfast_reference as R
from slowfast_kernels.checkpoints import (
    FORMATS,
    CheckpointError,
    caffe2_to_pyslowfast,
    detect_format,
    export_state_dict,
    load_checkpoint,
    read_checkpoint_file,
)

from _checkpoint_fixtures import (
    SUFFIX,
    NotAWeight,
    inputs,
    logits,
    pytorchvideo_builders,
    randomize,
    save_foreign,
    scramble,
)

ARCHS = ("slowfast_r50_8x8", "slowfast_r50_4x16", "slow_r50_8x8")
NUM_CLASSES = 11  # not 400: a head that ignores num_classes would show


@pytest.fixture(scope="module")
def sources():
    """Per arch: a randomised source model, its logits on a small clip, and a fresh target model."""
    cache = {}

    def get(arch):
        if arch not in cache:
            src = randomize(R.build_model(arch, num_classes=NUM_CLASSES)).eval()
            x = inputs(src)
            cache[arch] = (src, x, logits(src, x), R.build_model(arch, num_classes=NUM_CLASSES))
        return cache[arch]

    return get


def assert_same_state(actual: torch.nn.Module, expected: torch.nn.Module, with_step_counts: bool = True):
    a, e = actual.state_dict(), expected.state_dict()
    assert list(a) == list(e)
    for key in e:
        if key.endswith("num_batches_tracked") and not with_step_counts:
            continue
        assert torch.equal(a[key], e[key]), key


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_through_file(sources, tmp_path, arch, fmt):
    src, x, expected, target = sources(arch)
    path = tmp_path / f"ckpt{SUFFIX[fmt]}"
    save_foreign(src, path, fmt)
    counted = fmt != "pyslowfast-caffe2"  # Caffe2 BN keeps no step count
    for asked in ("auto", fmt):
        scramble(target)
        assert load_checkpoint(target, path, format=asked) is target
        assert_same_state(target, src, with_step_counts=counted)
    torch.testing.assert_close(logits(target, x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_format(sources, fmt):
    src = sources("slow_r50_8x8")[0]
    assert detect_format(export_state_dict(src, fmt)) == fmt
    assert detect_format(export_state_dict(sources("slowfast_r50_8x8")[0], fmt)) == fmt


def test_public_export():
    assert slowfast_kernels.load_checkpoint is load_checkpoint
    assert "load_checkpoint" in slowfast_kernels.__all__


@pytest.fixture(scope="module")
def r101():
    return randomize(R.slowfast_r101_16x8())  # 400 classes


def test_r101_16x8_round_trip_in_memory(r101):
    # R101 16x8: 23 res4 blocks (Caffe2 names the res4 lateral t_res4_22_...), 6 of them with temporal kernels.
    target = R.slowfast_r101_16x8()
    blobs = export_state_dict(r101, "pyslowfast-caffe2")
    assert "t_res4_22_branch2c_bn_subsample_w" in blobs
    load_checkpoint(target, blobs)
    assert_same_state(target, r101, with_step_counts=False)


# PySlowFast's own examples of its Caffe2 name conversion (c2_model_loading.py comments), plus the
# other blob families of a SlowFast model.
CAFFE2_NAMES = {
    "conv1_w": "s1.pathway0_stem.conv.weight",
    "res_conv1_bn_riv": "s1.pathway0_stem.bn.running_var",
    "t_conv1_w": "s1.pathway1_stem.conv.weight",
    "t_res_conv1_bn_s": "s1.pathway1_stem.bn.weight",
    "t_pool1_subsample_w": "s1_fuse.conv_f2s.weight",
    "t_pool1_subsample_bn_rm": "s1_fuse.bn.running_mean",
    "t_res4_5_branch2c_bn_subsample_bn_rm": "s4_fuse.bn.running_mean",
    "t_res2_2_branch2c_bn_subsample_w": "s2_fuse.conv_f2s.weight",
    "res4_4_branch2c_bn_b": "s4.pathway0_res4.branch2.c_bn.bias",
    "res4_0_branch1_w": "s4.pathway0_res0.branch1.weight",
    "t_res3_0_branch1_bn_s": "s3.pathway1_res0.branch1_bn.weight",
    "t_res5_2_branch2a_w": "s5.pathway1_res2.branch2.a.weight",
    "pred_w": "head.projection.weight",
    "pred_b": "head.projection.bias",
    "conv1_w_momentum": None,
    "model_iter": None,
}


@pytest.mark.parametrize("blob,key", sorted(CAFFE2_NAMES.items()))
def test_caffe2_names_follow_pyslowfast(blob, key):
    assert caffe2_to_pyslowfast(blob) == key


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_caffe2_pickles_of_every_protocol(tmp_path, protocol):
    blobs = {"conv1_w": np.arange(6, dtype=np.float32).reshape(1, 2, 1, 3, 1), "lr": np.float32(0.1)}
    data = pickle.dumps({"blobs": blobs}, protocol=protocol)
    if protocol < 5:
        # Python 2 era files name numpy's pre-2.0 module; both spellings must load.
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(data)
    loaded = read_checkpoint_file(path)["blobs"]
    assert np.array_equal(loaded["conv1_w"], blobs["conv1_w"]) and loaded["lr"] == np.float32(0.1)


def test_caffe2_blobs_are_pyslowfast_keys(sources):
    src = sources("slowfast_r50_8x8")[0]
    blobs = export_state_dict(src, "pyslowfast-caffe2")
    keys = export_state_dict(src, "pyslowfast")
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in blobs.values())
    renamed = {caffe2_to_pyslowfast(b): v for b, v in blobs.items()}
    assert set(renamed) == {k for k in keys if not k.endswith("num_batches_tracked")}
    for key, value in renamed.items():
        assert torch.equal(torch.from_numpy(value), keys[key]), key


def test_mmaction2_head_reads_fast_before_slow(sources):
    src = sources("slowfast_r50_8x8")[0]
    fc = export_state_dict(src, "mmaction2")["cls_head.fc_cls.weight"]
    ours = src.blocks[-1].proj.weight
    torch.testing.assert_close(fc[:, :256], ours[:, 2048:], rtol=0, atol=0)
    torch.testing.assert_close(fc[:, 256:], ours[:, :2048], rtol=0, atol=0)


def test_mmaction2_bare_laterals_switch_the_model(tmp_path):
    src = randomize(R.slowfast_r50_8x8(num_classes=NUM_CLASSES, lateral_norm=False)).eval()
    x = inputs(src)
    sd = export_state_dict(src, "mmaction2")
    assert not any("_lateral.bn." in k for k in sd) and "backbone.slow_path.layer3_lateral.conv.weight" in sd
    path = tmp_path / "slowfast_mmaction2.pth"
    save_foreign(src, path, "mmaction2")
    target = R.slowfast_r50_8x8(num_classes=NUM_CLASSES)  # built with lateral BN + ReLU
    load_checkpoint(target, path)
    assert target.lateral_norm is False
    fusions = [m for m in target.modules() if isinstance(m, R.FuseFastToSlow)]
    assert len(fusions) == 4 and all(m.norm is None and m.activation is None for m in fusions)
    assert_same_state(target, src)
    torch.testing.assert_close(logits(target, x), logits(src, x), rtol=0, atol=0)


def test_mmaction2_keeps_its_global_head_pool():
    """MMAction2's SlowFastHead: AdaptiveAvgPool3d(1) per pathway, concat [fast, slow], fc. Loading its weights
    switches the head to a global pool; PySlowFast's weights keep the fixed (T, 7, 7) window."""
    src = randomize(R.slowfast_r50_8x8(num_classes=NUM_CLASSES, train_crop=64)).eval()
    sd = export_state_dict(src, "mmaction2")
    target = R.slowfast_r50_8x8(num_classes=NUM_CLASSES, train_crop=64)
    load_checkpoint(target, {"state_dict": sd}).eval()
    assert target.head_pool == "global" and target.head_pool_kernels() is None
    x = inputs(target, size=96)  # res5 maps of 3x3: 2x2 windows (train_crop 64) at 4 overlapping positions
    with torch.no_grad():
        y = list(x)
        for block in target.blocks[:-2]:
            y = block(y)
        slow, fast = (t.mean(dim=(2, 3, 4)) for t in y)
        mmaction2 = torch.nn.functional.linear(torch.cat([fast, slow], dim=1), sd["cls_head.fc_cls.weight"],
                                               sd["cls_head.fc_cls.bias"])
        torch.testing.assert_close(logits(target, x), mmaction2, rtol=1e-5, atol=1e-5)
        pyslowfast = R.slowfast_r50_8x8(num_classes=NUM_CLASSES, train_crop=64)
        load_checkpoint(pyslowfast, export_state_dict(src, "pyslowfast"))
        assert pyslowfast.head_pool == "fixed"
        assert (logits(pyslowfast, x) - mmaction2).abs().max() > 1e-3 * mmaction2.abs().max()


def test_legacy_and_ddp_files(sources, tmp_path):
    src, _, _, target = sources("slow_r50_8x8")
    legacy = tmp_path / "legacy.pyth"
    save_foreign(src, legacy, "pyslowfast", legacy=True)
    scramble(target)
    load_checkpoint(target, legacy)
    assert_same_state(target, src)
    ddp = {"module." + k: v for k, v in export_state_dict(src, "pyslowfast").items()}
    scramble(target)
    load_checkpoint(target, {"model_state": ddp}, format="pyslowfast")
    assert_same_state(target, src)


def test_strict_lists_every_problem_and_loads_nothing(sources):
    src, _, _, target = sources("slowfast_r50_8x8")
    sd = dict(export_state_dict(src, "pyslowfast"))
    del sd["s2.pathway0_res1.branch2.b.weight"], sd["s1_fuse.bn.running_var"]
    sd["s5.pathway1_res9.branch2.a.weight"] = torch.zeros(1)
    sd["head.projection.weight"] = torch.zeros(NUM_CLASSES, 7)
    scramble(target)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_checkpoint(target, sd)
    msg = str(err.value)
    assert "2 missing, 1 unexpected, 1 shape-mismatched" in msg and "nothing was loaded" in msg
    for key in ("blocks.1.multipathway_blocks.0.res_blocks.1.branch2.conv_b.weight", "s1_fuse.bn.running_var",
                "s5.pathway1_res9.branch2.a.weight", "head.projection.weight: checkpoint (11, 7) vs model (11, 2304)"):
        assert key in msg
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    with pytest.warns(UserWarning, match="the matching tensors were loaded"):
        load_checkpoint(target, sd, strict=False)
    assert torch.equal(target.state_dict()["blocks.0.multipathway_blocks.0.conv.weight"],
                       src.state_dict()["blocks.0.multipathway_blocks.0.conv.weight"])


def test_other_architecture_is_one_clear_error(r101, tmp_path):
    path = tmp_path / "SLOWFAST_16x8_R101.pyth"
    save_foreign(r101, path, "pyslowfast")
    target = R.slowfast_r50_8x8(num_classes=101)
    with pytest.raises(ValueError) as err:
        load_checkpoint(target, path)
    msg = str(err.value)
    assert repr(str(path)) in msg and "pyslowfast layout" in msg
    assert "s4.pathway0_res22.branch2.c_bn.weight" in msg and "unexpected" in msg
    assert "the checkpoint has 400 classes, the model 101" in msg


@pytest.mark.parametrize("fmt", ["auto", "pyslowfast", "pyslowfast-caffe2"])
def test_corrupt_and_missing_files(tmp_path, fmt):
    model = R.slow_r50_8x8(num_classes=3)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00blobs" + bytes(range(256)))
    with pytest.raises(CheckpointError, match=rf"garbage\.pkl.*\({fmt}\).*corrupt"):
        load_checkpoint(model, garbage, format=fmt)
    truncated = tmp_path / "truncated.pyth"
    save_foreign(model, truncated, "pyslowfast")
    truncated.write_bytes(truncated.read_bytes()[: 1 << 16])
    with pytest.raises(CheckpointError, match=rf"truncated\.pyth.*\({fmt}\)"):
        load_checkpoint(model, truncated, format=fmt)
    with pytest.raises(FileNotFoundError, match=rf"nope\.pyth.*\({fmt}\) does not exist"):
        load_checkpoint(model, tmp_path / "nope.pyth", format=fmt)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(model, tmp_path, format=fmt)


def test_non_checkpoint_objects(tmp_path):
    model = R.slow_r50_8x8(num_classes=3)
    cases = {"list.pt": [1, 2, 3], "tensor.pt": torch.zeros(3), "meta.pt": {"epoch": 3, "cfg": "x"}, "empty.pt": {}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_checkpoint(model, tmp_path / name)
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint format"):
        load_checkpoint(model, {"encoder.weight": torch.zeros(1)})


def test_untrusted_objects_are_refused(sources, tmp_path):
    src, _, _, target = sources("slow_r50_8x8")
    path = tmp_path / "train_state.pth"
    torch.save({"meta": {"logger": NotAWeight(1)}, "state_dict": export_state_dict(src, "mmaction2")}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_checkpoint(target, path)
    scramble(target)
    load_checkpoint(target, path, weights_only=False)
    assert_same_state(target, src)

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": NotAWeight()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="_checkpoint_fixtures.NotAWeight.*weights_only=False"):
        load_checkpoint(target, evil)


def test_bad_arguments(sources):
    src, _, _, target = sources("slow_r50_8x8")
    sd = export_state_dict(src, "pyslowfast")
    with pytest.raises(ValueError, match="format must be one of"):
        load_checkpoint(target, sd, format="caffe2")
    with pytest.raises(CheckpointError, match="format='mmaction2' was asked for, but the keys are in the pyslowfast"):
        load_checkpoint(target, sd, format="mmaction2")
    with pytest.raises(TypeError, match="model: expected a slowfast_reference.SlowFast"):
        load_checkpoint(torch.nn.Linear(2, 2), sd)
    with pytest.raises(TypeError, match="path_or_state_dict: expected a file path or a state dict"):
        load_checkpoint(target, 42)
    with pytest.raises(ValueError, match="format must be one of"):
        export_state_dict(target, "auto")
    ttc = R.slowfast_r50_8x8(lateral="time_to_channel")
    with pytest.raises(ValueError, match="lateral='time_to_channel'"):
        export_state_dict(ttc, "mmaction2")
    with pytest.raises(ValueError, match="laterals are bare"):
        export_state_dict(R.slowfast_r50_8x8(lateral_norm=False), "pyslowfast")


@pytest.fixture(scope="module")
def ptv():
    builders = pytorchvideo_builders()
    # pytorchvideo is a test dependency (pyproject's [test] extra): its absence is a failure, not a skip.
    assert builders is not None, "pytorchvideo (with fvcore) must be installed: pip install -e '.[test]'"
    return builders


def test_real_pytorchvideo_file(ptv, tmp_path):
    create_slowfast, _ = ptv
    theirs = randomize(create_slowfast(
        slowfast_fusion_conv_kernel_size=(7, 1, 1), slowfast_fusion_conv_stride=(4, 1, 1),
        head_pool=torch.nn.AdaptiveAvgPool3d, model_num_class=NUM_CLASSES,
    )).eval()
    ours = R.slowfast_r50_8x8(num_classes=NUM_CLASSES)
    x = inputs(ours)
    expected = logits(theirs, x)
    sd = theirs.state_dict()
    # Hub files wrap the state dict in {"model_state": ...}; a user's torch.save(model.state_dict()) does not.
    for name, obj in (("plain.pyth", sd), ("SLOWFAST_8x8_R50.pyth", {"model_state": sd})):
        torch.save(obj, tmp_path / name)
        scramble(ours)
        load_checkpoint(ours, tmp_path / name)
        torch.testing.assert_close(logits(ours, x), expected, rtol=0, atol=0)


# Key names and shapes as the real frameworks write them for SlowFast R50 8x8 (PySlowFast
# video_model_builder.SlowFast / resnet_helper / head_helper; MMAction2 ResNet3dSlowFast + SlowFastHead),
# written out here independently of checkpoints.py so a wrong name in its key table cannot go unnoticed.
REAL_KEYS = {
    "pyslowfast": {
        "s1.pathway0_stem.conv.weight": (64, 3, 1, 7, 7),
        "s1.pathway1_stem.conv.weight": (8, 3, 5, 7, 7),
        "s1.pathway1_stem.bn.running_var": (8,),
        "s1_fuse.conv_f2s.weight": (16, 8, 7, 1, 1),
        "s1_fuse.bn.weight": (16,),
        "s2.pathway0_res0.branch1.weight": (256, 80, 1, 1, 1),
        "s2.pathway0_res0.branch1_bn.running_mean": (256,),
        "s2.pathway0_res0.branch2.a.weight": (64, 80, 1, 1, 1),
        "s2.pathway0_res0.branch2.a_bn.weight": (64,),
        "s2.pathway0_res1.branch2.b.weight": (64, 64, 1, 3, 3),
        "s2.pathway1_res0.branch2.a.weight": (8, 8, 3, 1, 1),
        "s2_fuse.conv_f2s.weight": (64, 32, 7, 1, 1),
        "s4.pathway0_res0.branch2.a.weight": (256, 640, 3, 1, 1),
        "s5.pathway0_res2.branch2.c.weight": (2048, 512, 1, 1, 1),
        "s5.pathway1_res2.branch2.c_bn.bias": (256,),
        "head.projection.weight": (400, 2304),
        "head.projection.bias": (400,),
    },
    "mmaction2": {
        "backbone.slow_path.conv1.conv.weight": (64, 3, 1, 7, 7),
        "backbone.slow_path.conv1.bn.weight": (64,),
        "backbone.fast_path.conv1.conv.weight": (8, 3, 5, 7, 7),
        "backbone.slow_path.conv1_lateral.conv.weight": (16, 8, 7, 1, 1),
        "backbone.slow_path.layer1.0.conv1.conv.weight": (64, 80, 1, 1, 1),
        "backbone.slow_path.layer1.0.downsample.conv.weight": (256, 80, 1, 1, 1),
        "backbone.slow_path.layer1.0.downsample.bn.running_var": (256,),
        "backbone.slow_path.layer1_lateral.conv.weight": (64, 32, 7, 1, 1),
        "backbone.slow_path.layer3.0.conv1.conv.weight": (256, 640, 3, 1, 1),
        "backbone.slow_path.layer3_lateral.conv.weight": (256, 128, 7, 1, 1),
        "backbone.fast_path.layer1.0.conv1.conv.weight": (8, 8, 3, 1, 1),
        "backbone.fast_path.layer4.2.conv3.bn.bias": (256,),
        "cls_head.fc_cls.weight": (400, 2304),
    },
}


@pytest.mark.parametrize("fmt", sorted(REAL_KEYS))
def test_export_uses_the_frameworks_real_key_names(fmt):
    sd = export_state_dict(R.slowfast_r50_8x8(), fmt)
    for key, shape in REAL_KEYS[fmt].items():
        assert key in sd, f"{fmt}: {key} missing from the exported layout"
        assert tuple(sd[key].shape) == shape, f"{fmt}: {key} has shape {tuple(sd[key].shape)}, expected {shape}"
    assert not any("layer4_lateral" in k or k.startswith("s5_fuse") for k in sd)  # no lateral after res5


# --- the architecture a checkpoint holds, PyTorchVideo model objects, truncated files ---

from slowfast_kernels.checkpoints import detect_arch, to_reference_model  # noqa: E402

ALL_ARCHS = ("slowfast_r50_8x8", "slowfast_r50_4x16", "slowfast_r101_8x8", "slowfast_r101_16x8", "slow_r50_8x8")


@pytest.fixture(scope="module")
def every_arch():
    return {arch: R.build_model(arch, num_classes=7) for arch in ALL_ARCHS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_arch_from_keys_and_shapes(every_arch, fmt):
    for arch, model in every_arch.items():
        info = detect_arch(export_state_dict(model, fmt))
        assert (info.arch, info.format, info.num_classes) == (arch, fmt, 7), arch


def test_detect_arch_from_a_file_and_bare_mmaction2_laterals(every_arch, tmp_path):
    path = tmp_path / "r101.pth"
    save_foreign(every_arch["slowfast_r101_8x8"], path, "mmaction2")
    info = detect_arch(path)
    assert (info.arch, info.format, info.num_classes) == ("slowfast_r101_8x8", "mmaction2", 7)
    assert "r101.pth" in info.source
    bare = R.build_model("slowfast_r50_4x16", num_classes=3, lateral_norm=False)
    assert detect_arch(export_state_dict(bare, "mmaction2")).arch == "slowfast_r50_4x16"


def test_detect_arch_names_the_closest_when_nothing_fits(every_arch):
    state = dict(export_state_dict(every_arch["slowfast_r50_8x8"], "pyslowfast"))
    del state["s3.pathway0_res1.branch2.a.weight"]
    with pytest.raises(CheckpointError, match=r"none of the known architectures.*closest, slowfast_r50_8x8.*1 missing"):
        detect_arch(state)


@pytest.mark.parametrize("fmt,legacy", [("pyslowfast", False), ("pyslowfast", True), ("pyslowfast-caffe2", False)])
def test_truncated_file_is_one_line(tmp_path, fmt, legacy):
    model = R.slow_r50_8x8(num_classes=3)
    path = tmp_path / f"cut{SUFFIX[fmt]}"
    save_foreign(model, path, fmt, legacy=legacy)
    data = path.read_bytes()
    for cut in (len(data) // 2, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(model, path)
        message = str(err.value)
        assert message.startswith(f"truncated or corrupt checkpoint file {path} ")
        assert "\n" not in message and "persistent_load" not in message


def test_pytorchvideo_model_objects(ptv, every_arch):
    create_slowfast, create_resnet = ptv
    # PyTorchVideo's modules carry numpy ints (kernel sizes, strides): accepted where torch accepts them.
    theirs = randomize(create_slowfast(
        slowfast_fusion_conv_kernel_size=(5, 1, 1), slowfast_fusion_conv_stride=(8, 1, 1),
        head_pool_kernel_sizes=((np.int64(4), np.int64(1), np.int64(1)), (np.int64(32), 1, 1)),
        head_activation=lambda: torch.nn.Softmax(dim=1), model_num_class=5,
    )).eval()
    with torch.no_grad():
        theirs.blocks[-1].proj.weight.mul_(2e-3)
    ours = to_reference_model(theirs)
    assert isinstance(ours, R.SlowFast) and not ours.training
    assert (ours.config.alpha, ours.config.fusion_kernel, ours.num_classes, ours.config.train_crop) == (8, 5, 5, 32)
    x = R.pack_pathways(torch.randn(1, 3, 32, 64, 64), 8)  # a 1x1 window over a 2x2 map: 4 positions
    with torch.no_grad():
        expected = theirs([t.clone() for t in x])
        torch.testing.assert_close(ours(x), expected, rtol=1e-6, atol=1e-6)  # 2x2 positions, softmax each
    # load_checkpoint takes the model object as its source of weights
    target = R.slowfast_r50_4x16(num_classes=5, head_act="softmax", train_crop=32)
    scramble(target)
    load_checkpoint(target, theirs)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), expected, rtol=1e-6, atol=1e-6)
    slow = create_resnet(  # PyTorchVideo's slow_r50
        stem_conv_kernel_size=(1, 7, 7), head_pool_kernel_size=(8, 7, 7), stage1_pool=None,
        stage_conv_a_kernel_size=((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)), model_num_class=4,
    ).eval()
    assert to_reference_model(slow).config.slow_only
    assert to_reference_model(ours) is ours
    with pytest.raises(TypeError, match="nn.Module"):
        to_reference_model({"blocks.0.conv.weight": torch.zeros(1)})


# --- one bad key named on the first line, --non-strict, weights_only refusals keep torch's reason ----------

@pytest.mark.parametrize("problem", ["extra", "missing", "shape"])
def test_one_bad_key_is_named_on_the_first_line(sources, problem):
    src, _, _, target = sources("slow_r50_8x8")
    sd = dict(export_state_dict(src, "pyslowfast"))
    if problem == "extra":
        sd["s6.pathway0_res0.branch2.a.weight"] = torch.zeros(1)
        named = "unexpected: s6.pathway0_res0.branch2.a.weight"
    elif problem == "missing":
        del sd["s3.pathway0_res2.branch2.b_bn.running_var"]
        named = "missing: blocks.2.res_blocks.2.branch2.norm_b.running_var (checkpoint key " \
                "'s3.pathway0_res2.branch2.b_bn.running_var')"
    else:
        sd["s2.pathway0_res0.branch2.c.weight"] = torch.zeros(256, 64, 1, 1, 2)
        named = "shape mismatch: s2.pathway0_res0.branch2.c.weight: checkpoint (256, 64, 1, 1, 2) vs model " \
                "(256, 64, 1, 1, 1) (the model expects (256, 64, 1, 1, 1), found (256, 64, 1, 1, 2)"
    with pytest.raises(ValueError) as err:
        load_checkpoint(target, sd)
    first = str(err.value).splitlines()[0]
    assert named in first and "nothing was loaded" in first


def test_weights_only_refusal_keeps_torchs_reason(tmp_path):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pyth"
    torch.save({"model_state": {"w": torch.zeros(1)}, "hook": RunsCode()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(R.slow_r50_8x8(num_classes=3), path)
    (line,) = str(err.value).splitlines()
    assert f"GLOBAL {os.system.__module__}.system" in line and "weights_only=False" in line
    assert "documentation" not in line


def test_cli_non_strict_loads_and_reports_what_it_skipped(sources, tmp_path, capsys):
    from slowfast_kernels import io
    from slowfast_kernels.__main__ import main

    src, _, _, _ = sources("slow_r50_8x8")
    sd = dict(export_state_dict(src, "pyslowfast"))
    sd["s6.extra.weight"] = torch.zeros(2)
    ckpt = tmp_path / "extra.pyth"
    torch.save({"model_state": sd}, ckpt)
    video = io.write_video(tmp_path / "v.mp4", io.synthetic_video(24, 32, 32), fps=30)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(NUM_CLASSES)))
    args = ["classify", str(video), "--checkpoint", str(ckpt), "--size", "32", "--crop", "32", "--device", "cpu",
            "--dtype", "float32", "--labels", str(labels), "--top", "3", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unexpected: s6.extra.weight" in err
    assert main(args + ["--non-strict"]) == 0
    err = capsys.readouterr().err
    assert "warning: --non-strict:" in err and "unexpected: s6.extra.weight" in err
