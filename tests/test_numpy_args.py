"""Numpy integers wherever PyTorch itself takes them (PyTorchVideo's modules carry np.int64 strides): the
reference factories and config fields, FuseFastToSlow and the lateral functions, conv3d_bn_act's
stride/padding/dilation, lateral_fuse's alpha, temporal_indices and pack_pathways. Each result equals the
one with Python ints and is stored as Python ints; bool is refused where an int is expected."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_reference.models import SlowFastConfig

from conftest import cpu_backends

BACKENDS = cpu_backends()
i64, i32 = np.int64, np.int32


# -- reference models -------------------------------------------------------------------------------------

def test_config_fields_become_python_ints():
    cfg = SlowFastConfig(depth=i64(50), alpha=i64(4), beta_inv=i32(8), num_frames=i64(8), fusion_kernel=i64(7),
                         fusion_channel_ratio=i64(2), num_block_temp_kernel=(i64(3), 4, i64(6), 3),
                         train_crop=i64(224))
    assert cfg == SlowFastConfig(num_frames=8, num_block_temp_kernel=(3, 4, 6, 3))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        values = value if isinstance(value, tuple) else (value,)
        assert all(type(v) in (int, bool) for v in values), (field.name, value)
    assert cfg.head_pool_kernels() == [(2, 7, 7), (8, 7, 7)]
    assert all(type(k) is int for kernel in cfg.head_pool_kernels() for k in kernel)


@pytest.mark.parametrize("field,bad", [("alpha", True), ("alpha", 4.0), ("beta_inv", "8"), ("fusion_kernel", 0),
                                       ("train_crop", np.float64(224)), ("depth", 34), ("depth", np.bool_(True))])
def test_config_refuses_non_ints_by_name(field, bad):
    with pytest.raises(ValueError, match=f"SlowFastConfig: {field}: expected"):
        SlowFastConfig(**{field: bad})
    with pytest.raises(ValueError, match="num_block_temp_kernel: expected None or 4 ints"):
        SlowFastConfig(num_block_temp_kernel=(3, 4))


@pytest.mark.parametrize("arch", ["slowfast_r50_8x8", "slow_r50_8x8"])
def test_factories_take_numpy_ints(arch):
    torch.manual_seed(0)
    ref = R.build_model(arch, num_classes=5, train_crop=64).eval()
    torch.manual_seed(0)
    model = R.build_model(arch, num_classes=i64(5), train_crop=i64(64)).eval()
    assert type(model.num_classes) is int and type(model.config.train_crop) is int
    assert model.head_pool_kernels() == ref.head_pool_kernels()
    model.load_state_dict(ref.state_dict())
    cfg = ref.config
    clip = torch.randn(1, 3, cfg.num_frames, 64, 64)
    x = [clip] if cfg.slow_only else R.pack_pathways(clip, i64(cfg.alpha))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_classes: expected an int >= 1"):
        R.build_model(arch, num_classes=True)
    with pytest.raises(ValueError, match="train_crop: expected an int >= 1"):
        R.build_model(arch, train_crop=224.0)


@pytest.mark.parametrize("mode", ["time_strided_conv", "time_to_channel", "time_strided_sampling"])
def test_fuse_fast_to_slow_takes_numpy_ints(mode):
    torch.manual_seed(0)
    ref = R.FuseFastToSlow(mode, 8, 4, kernel_size=5, fusion_channel_ratio=2).eval()
    torch.manual_seed(0)
    got = R.FuseFastToSlow(mode, i64(8), i64(4), kernel_size=i64(5), fusion_channel_ratio=i32(2)).eval()
    assert type(got.alpha) is int
    got.load_state_dict(ref.state_dict())
    x = [torch.randn(2, 16, 3, 5, 7), torch.randn(2, 8, 12, 5, 7)]
    with torch.no_grad():
        torch.testing.assert_close(got(x)[0], ref(x)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="FuseFastToSlow: alpha: expected an int >= 1"):
        R.FuseFastToSlow(mode, 8, True)


def test_lateral_functions_take_numpy_ints():
    fast = torch.randn(2, 3, 8, 4, 5)
    assert torch.equal(R.time_to_channel(fast, i64(4)), R.time_to_channel(fast, 4))
    assert torch.equal(R.time_strided_sampling(fast, i32(4)), R.time_strided_sampling(fast, 4))
    with pytest.raises(ValueError, match="time_to_channel: alpha: expected an int"):
        R.time_to_channel(fast, 4.0)
    with pytest.raises(ValueError, match="time_strided_sampling: alpha: expected an int"):
        R.time_strided_sampling(fast, True)


def test_reference_pack_pathways_takes_numpy_alpha():
    frames = torch.randn(3, 32, 4, 4)
    slow, fast = R.pack_pathways(frames, i64(4))
    assert torch.equal(slow, R.pack_pathways(frames, 4)[0]) and fast is frames
    with pytest.raises(ValueError, match="alpha: expected a positive int"):
        R.pack_pathways(frames, True)


def test_fuse_takes_a_model_with_numpy_strides():
    """A PyTorchVideo-built model's convs carry np.int64 strides; nn.Conv3d accepts them, so must fuse()."""
    torch.manual_seed(0)
    model = R.slowfast_r50_8x8(num_classes=5).eval()
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            m.stride = tuple(i64(s) for s in m.stride)
            m.padding = tuple(i64(p) for p in m.padding)
    x = R.pack_pathways(torch.randn(1, 3, 8, 64, 64), 4)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(sk.fuse(model, backend="reference")(x), expected, atol=1e-4, rtol=1e-4)


# -- ops ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,padding,dilation", [
    (i64(2), i64(1), i64(1)),
    ((1, i64(2), i32(2)), (i64(1), 1, 1), (1, 1, i64(1))),
    (np.array([1, 2, 2]), np.array([1, 1, 1]), np.array([1, 1, 1])),
])
def test_conv3d_bn_act_takes_numpy_ints(backend, stride, padding, dilation):
    x = torch.randn(1, 4, 5, 9, 11)
    w, b = torch.randn(6, 4, 3, 3, 3), torch.randn(6)
    ints = [tuple(int(e) for e in np.broadcast_to(np.asarray(v), 3)) for v in (stride, padding, dilation)]
    expected = sk.conv3d_bn_act_ref(x, w, b, *ints)
    got = sk.conv3d_bn_act(x, w, b, stride, padding, dilation, backend=backend)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_conv3d_bn_act_module_with_numpy_strides():
    conv = nn.Conv3d(4, 6, (3, 3, 3), stride=(1, i64(2), i64(2)), padding=(i64(1), 1, 1), bias=False)
    bn = nn.BatchNorm3d(6).eval()
    x = torch.randn(1, 4, 5, 9, 11)
    layer = sk.Conv3dBNAct.from_conv_bn(conv, bn).eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.relu(bn(conv(x))), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,bad", [("stride", True), ("stride", (1, True, 1)), ("padding", 1.0),
                                      ("dilation", np.float64(1)), ("stride", np.array([1, 2])),
                                      ("padding", (np.bool_(True), 0, 0))])
def test_conv3d_bn_act_refuses_non_ints_by_name(name, bad):
    x, w = torch.randn(1, 4, 5, 9, 11), torch.randn(6, 4, 3, 3, 3)
    with pytest.raises(ValueError, match=f"conv3d_bn_act: {name}: expected an int or 3 ints"):
        sk.conv3d_bn_act(x, w, None, **{name: bad})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["time_strided_conv", "time_to_channel", "time_strided_sampling"])
def test_lateral_fuse_takes_numpy_alpha(backend, mode):
    slow, fast = torch.randn(2, 16, 3, 5, 7), torch.randn(2, 8, 12, 5, 7)
    weight = torch.randn(16, 8, 5, 1, 1) if mode == "time_strided_conv" else None
    expected = sk.lateral_fuse_ref(slow, fast, mode, 4, weight)
    for alpha in (i64(4), i32(4)):
        got = sk.lateral_fuse(slow, fast, mode, alpha, weight, backend=backend)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="lateral_fuse: alpha: expected a positive int"):
        sk.lateral_fuse(slow, fast, mode, True, weight, backend=backend)
    with pytest.raises(ValueError, match="lateral_fuse: alpha: expected a positive int"):
        sk.lateral_fuse(slow, fast, mode, 4.0, weight, backend=backend)


def test_temporal_indices_takes_numpy_numbers():
    expected = sk.temporal_indices(300, 32, 2, 1, 3, fps=25.0)
    got = sk.temporal_indices(i64(300), i32(32), i64(2), i64(1), i64(3), fps=np.float64(25.0),
                              target_fps=np.int64(30))
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="num_frames: expected a positive int"):
        sk.temporal_indices(300, True, 2)
    with pytest.raises(ValueError, match="sampling_rate: expected a positive int"):
        sk.temporal_indices(300, 32, np.float64(2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_pathways_takes_numpy_ints(backend):
    video = torch.randint(0, 256, (2, 40, 20, 30, 3), dtype=torch.uint8)
    index = sk.temporal_indices(40, 8, 2)
    kw = dict(size=24, crop=20, spatial_idx=2)
    expected = sk.pack_pathways(video, index, 4, backend=backend, **kw)
    np_kw = dict(size=i64(24), crop=i32(20), spatial_idx=i64(2))
    for idx in (index.numpy(), [i64(v) for v in index.tolist()]):
        got = sk.pack_pathways(video, idx, i64(4), backend=backend, **np_kw)
        assert all(torch.equal(g, e) for g, e in zip(got, expected))
    got = sk.pack_pathways_ref(video, index.numpy(), i64(4), **np_kw)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=0)
    for name, bad in (("size", True), ("crop", 20.0), ("spatial_idx", True), ("alpha", True)):
        args = dict(kw, **{name: bad}) if name != "alpha" else kw
        with pytest.raises(ValueError, match=f"pack_pathways: {name}: expected"):
            sk.pack_pathways(video, index, bad if name == "alpha" else 4, backend=backend, **args)
