"""The reference RoIAlign (slowfast_reference.roi_align) against hand-computed values and against a literal
transcription of torchvision's CPU loop (csrc/ops/cpu/roi_align_kernel.cpp: pre_calc_for_bilinear_interpolate
and roi_align_forward), on boxes inside, across and outside the map, zero-area boxes and empty box sets."""
import math

import pytest
import torch

from slowfast_reference.roi_align import RoIAlign, boxes_with_index, roi_align


def ramp(h=4, w=4, n=1, c=1):
    """x[n, c, y, x] = 4 y + x (+ 100 n + 10 c): bilinear interpolation of a linear map is exact."""
    y = torch.arange(h, dtype=torch.float32)[:, None]
    x = torch.arange(w, dtype=torch.float32)[None, :]
    base = 4 * y + x
    return torch.stack([torch.stack([base + 100 * i + 10 * j for j in range(c)]) for i in range(n)])


def one(x, box, size=1, scale=1.0, ratio=-1, aligned=False):
    return roi_align(x, torch.tensor([box], dtype=torch.float32), size, scale, ratio, aligned)


def test_centre_samples_of_a_box():
    # box 0..2, one bin, 2x2 samples at 0.5 and 1.5: mean position (1, 1) -> 4 + 1
    assert one(ramp(), [0, 0, 0, 2, 2], ratio=2).item() == pytest.approx(5.0)
    # aligned: the box starts at -0.5, samples at 0 and 1: mean (0.5, 0.5) -> 2.5
    assert one(ramp(), [0, 0, 0, 2, 2], ratio=2, aligned=True).item() == pytest.approx(2.5)


def test_adaptive_sampling_ratio():
    # box 0..3, 2x2 bins of 1.5: ceil(3 / 2) = 2 samples per bin side, at 0.375, 1.125 | 1.875, 2.625
    out = one(ramp(), [0, 0, 0, 3, 3], size=2, ratio=0)[0, 0]
    lo, hi = (0.375 + 1.125) / 2, (1.875 + 2.625) / 2
    expected = torch.tensor([[4 * lo + lo, 4 * lo + hi], [4 * hi + lo, 4 * hi + hi]])
    torch.testing.assert_close(out, expected)
    # a box of 5 pixels over 2 bins samples ceil(2.5) = 3 per side: positions 5/12, 15/12, 25/12 in bin 0
    out = one(ramp(8, 8), [0, 0, 0, 5, 5], size=2, ratio=0)[0, 0, 0, 0]
    m = (5 / 12 + 15 / 12 + 25 / 12) / 3
    assert out.item() == pytest.approx(5 * m)


def test_bilinear_weights_of_a_hot_pixel():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 2] = 1.0
    # one sample at (1.5, 1.5): the four neighbours weigh 1/4 each, one of them is the hot pixel
    assert one(x, [0, 0.5, 0.5, 2.5, 2.5], ratio=1).item() == pytest.approx(0.25)
    # at (1.25, 1.75): weight of (1, 2) = (1 - 0.25) * 0.75
    assert one(x, [0, 0.75, 0.25, 2.75, 2.25], ratio=1).item() == pytest.approx(0.5625)


def test_boxes_across_and_outside_the_border():
    x = ramp() + 1
    # samples at 3.75 (past the last row/column: reads it alone) and 5.25 (> H: zero): (16 + 0 + 0 + 0) / 4
    assert one(x, [0, 3, 3, 6, 6], ratio=2).item() == pytest.approx(16 / 4)
    # one sample at 4.5 > H = 4: zero
    assert one(x, [0, 3, 3, 6, 6], ratio=1).item() == 0.0
    # a sample in (-1, 0) is clamped to 0: reads x[0, 0] = 1
    assert one(x, [0, -2, -2, 1, 1], ratio=1).item() == pytest.approx(1.0)
    # a sample below -1: zero
    assert one(x, [0, -5, -5, -2, -2], ratio=1).item() == 0.0


def test_zero_area_boxes():
    # not aligned: the box grows to 1x1, one sample at 1.5 -> 4 * 1.5 + 1.5
    assert one(ramp(), [0, 1, 1, 1, 1], ratio=0).item() == pytest.approx(7.5)
    # aligned: no sample at all (ceil(0) = 0), the bin is 0
    assert one(ramp(), [0, 1, 1, 1, 1], ratio=0, aligned=True).item() == 0.0


def test_scale_batch_index_channels_and_empty_sets():
    x = ramp(n=2, c=3)
    # box in input pixels 0..4 at scale 1/2 -> 0..2 on the map, image 1, sampling 2: mean (1, 1)
    out = one(x, [1, 0, 0, 4, 4], scale=0.5, ratio=2)[0, :, 0, 0]
    torch.testing.assert_close(out, torch.tensor([105.0, 115.0, 125.0]))
    assert roi_align(x, torch.zeros(0, 5), (7, 7), 1 / 16, 0).shape == (0, 3, 7, 7)
    per_image = [torch.tensor([[0.0, 0, 4, 4]]), torch.zeros(0, 4), torch.tensor([[0.0, 0, 4, 4]])]
    assert boxes_with_index(per_image)[:, 0].tolist() == [0.0, 2.0]


def torchvision_loop(x, boxes, ph, pw, scale, ratio, aligned):
    """torchvision's CPU roi_align forward, line by line (scalar Python, fp64)."""
    n, c, h, w = x.shape
    out = torch.zeros(len(boxes), c, ph, pw, dtype=torch.float64)
    for k, (b, x1, y1, x2, y2) in enumerate(boxes.tolist()):
        off = 0.5 if aligned else 0.0
        sw, sh, ew, eh = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = ratio if ratio > 0 else math.ceil(rh / ph)
        gw = ratio if ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                acc = torch.zeros(c, dtype=torch.float64)
                for iy in range(gh):
                    yy = sh + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = sw + j * bw + (ix + 0.5) * bw / gw
                        if yy < -1.0 or yy > h or xx < -1.0 or xx > w:
                            continue
                        y, xq = max(yy, 0.0), max(xx, 0.0)
                        yl, xl = int(y), int(xq)
                        if yl >= h - 1:
                            yl = yh = h - 1
                            y = float(yl)
                        else:
                            yh = yl + 1
                        if xl >= w - 1:
                            xl = xh = w - 1
                            xq = float(xl)
                        else:
                            xh = xl + 1
                        ly, lx = y - yl, xq - xl
                        f = x[int(b)].double()
                        acc += (1 - ly) * (1 - lx) * f[:, yl, xl] + (1 - ly) * lx * f[:, yl, xh] \
                            + ly * (1 - lx) * f[:, yh, xl] + ly * lx * f[:, yh, xh]
                out[k, :, i, j] = acc / count
    return out


def random_boxes(k, n, h, w, scale, g):
    """Boxes in input pixels: inside, across the border, outside, zero-area and tiny."""
    span = torch.tensor([w, h, w, h], dtype=torch.float32) / scale
    a = torch.rand(k, 2, generator=g) * 1.4 - 0.2
    b = a + torch.rand(k, 2, generator=g) * 0.9
    xy = torch.cat([a, b], dim=1) * span
    xy[0, 2:] = xy[0, :2]  # zero area
    xy[1] = torch.tensor([-3.0, -3.0, -1.0, -1.0]) / scale  # fully outside
    idx = torch.randint(0, n, (k, 1), generator=g).float()
    return torch.cat([idx, xy], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio,size,scale", [(0, (7, 7), 1 / 16), (2, (3, 5), 0.5), (-1, (2, 2), 1.0)])
def test_matches_torchvision_loop(aligned, ratio, size, scale):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 7, generator=g)
    boxes = random_boxes(9, 2, 5, 7, scale, g)
    expected = torchvision_loop(x, boxes, *size, scale, ratio, aligned).float()
    torch.testing.assert_close(roi_align(x, boxes, size, scale, ratio, aligned), expected, atol=1e-5, rtol=1e-5)
    module = RoIAlign(size, scale, ratio, aligned)
    torch.testing.assert_close(module(x, boxes), expected, atol=1e-5, rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="boxes: expected \\[K, 5\\]"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="x: expected \\[N, C, H, W\\]"):
        roi_align(torch.zeros(1, 4, 4), torch.zeros(3, 5), 2)
