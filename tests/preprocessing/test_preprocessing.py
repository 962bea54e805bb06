"""Field-of-view crop, normalisation, mask reading, patch grid and patch labels (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retinalab.datasets import DataFormatError, FundusRecord
from retinalab.preprocessing import (
    PatchGrid,
    find_fov,
    load_fundus,
    normalize_max,
    read_image,
    read_mask,
)
from tests.data.common import fundus, save_jpg, save_mask, square_mask


def test_find_fov_crops_the_disc_to_a_centred_square():
    img = np.zeros((200, 300, 3), np.uint8)
    yy, xx = np.mgrid[0:200, 0:300]
    img[(xx - 150) ** 2 + (yy - 100) ** 2 <= 80**2] = (180, 80, 30)
    box = find_fov(img)
    x0, x1, y0, y1 = box.x0 * 300, box.x1 * 300, box.y0 * 200, box.y1 * 200
    assert x1 - x0 == pytest.approx(y1 - y0, abs=1)  # square in pixels
    assert x0 == pytest.approx(70, abs=3) and x1 == pytest.approx(230, abs=3)
    assert y0 == pytest.approx(20, abs=3) and y1 == pytest.approx(180, abs=3)


def test_find_fov_pads_a_truncated_disc():
    # the disc is cut at top and bottom (common on fundus cameras): the crop is padded, not squashed
    img = np.zeros((100, 300, 3), np.uint8)
    yy, xx = np.mgrid[0:100, 0:300]
    img[(xx - 150) ** 2 + (yy - 50) ** 2 <= 70**2] = 150
    box = find_fov(img)
    assert box.y0 < 0 and box.y1 > 1
    out = box.apply(img, 64, 3)
    assert out.shape == (64, 64, 3) and out[0].max() == 0  # padded rows are black


def test_find_fov_rejects_a_black_frame():
    with pytest.raises(ValueError, match="black"):
        find_fov(np.zeros((50, 50, 3), np.uint8))


def test_normalize_by_maximum():
    img = np.full((4, 4, 3), 50, np.uint8)
    img[0, 0, 0] = 100
    out = normalize_max(img)
    assert out.max() == 255 and out[1, 1, 1] == 128


@pytest.mark.parametrize("style", ["red", "palette", "binary", "grey"])
def test_read_mask_binarises_every_style(tmp_path, style):
    m = square_mask((96, 64), 20, 30)
    path = save_mask(tmp_path / f"m_{style}.png", m, style)
    assert (read_mask(path, (96, 64)) == m).all()


def test_mask_of_the_wrong_size_names_both_files(tmp_path):
    path = save_mask(tmp_path / "IDRiD_01_MA.tif", square_mask((50, 50), 5, 5))
    with pytest.raises(DataFormatError, match=r"IDRiD_01_MA.tif: mask is 50x50 but its image .*IDRiD_01.jpg is 96x64"):
        read_mask(path, (96, 64), tmp_path / "IDRiD_01.jpg")


def test_undecodable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataFormatError, match="broken.jpg"):
        read_image(bad)
    good = save_jpg(tmp_path / "good.jpg", fundus())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataFormatError, match="truncated.jpg: cannot decode"):
        read_image(truncated)


def test_fast_decode_keeps_at_least_the_target_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((1200, 1800, 3), 120, np.uint8)).save(path)
    arr, full = read_image(path, min_side=256)
    assert full == (1800, 1200)
    assert min(arr.shape[:2]) >= 256 and arr.shape[0] < 1200  # reduced DCT decode, not full size


def test_load_fundus_aligns_masks_with_the_image(tmp_path):
    img = fundus((96, 64))
    mask = square_mask((96, 64), 32, 48, r=3)  # centre of the disc
    img[mask] = (255, 255, 0)  # paint the lesion so we can find it in the output
    rec = FundusRecord(
        "a", save_jpg(tmp_path / "a.jpg", img), masks={"EX": save_mask(tmp_path / "a_EX.png", mask), "MA": None}
    )
    pre = load_fundus(rec, size=64, fast_decode=False)
    assert pre.image.shape == (64, 64, 3) and pre.image.max() == 255
    assert set(pre.masks) == {"EX", "MA"} and not pre.masks["MA"].any()
    ys, xs = np.nonzero(pre.masks["EX"])
    cy, cx = ys.mean(), xs.mean()
    assert abs(cy - 32) < 2 and abs(cx - 32) < 2
    yellow = (pre.image[..., 2] < 120) & (pre.image[..., 1] > 200)
    assert yellow[pre.masks["EX"]].mean() > 0.5


def test_load_fundus_rejects_a_non_fundus(tmp_path):
    rec = FundusRecord("black", save_jpg(tmp_path / "black.jpg", np.zeros((64, 64, 3), np.uint8)))
    with pytest.raises(DataFormatError, match=r"black.jpg: .*fundus photograph"):
        load_fundus(rec, size=64)


# ------------------------------------------------------------------ patch grid
def test_grid_geometry():
    g = PatchGrid(1024, 128, 128, 32)
    assert g.per_side == 8 and g.num_patches == 64
    c = g.coords()
    assert c[9].tolist() == [1, 1, 128, 128] and c[-1].tolist() == [7, 7, 896, 896]
    overlap = PatchGrid(1024, 128, 64, 32)
    assert overlap.per_side == 15 and overlap.coords()[1].tolist() == [0, 1, 0, 64]
    with pytest.raises(ValueError, match="patch_size"):
        PatchGrid(100, 128)


def test_grid_fast_extract_equals_per_patch_resize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    fast = PatchGrid(256, 64, 64, 16).extract(img)
    import cv2

    for r, c in [(0, 0), (1, 2), (3, 3)]:
        tile = img[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64]
        ref = cv2.resize(tile, (16, 16), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(fast[r * 4 + c], ref)
    overlap = PatchGrid(256, 64, 32, 16).extract(img)
    assert overlap.shape == (49, 16, 16, 3)
    np.testing.assert_array_equal(overlap[1], cv2.resize(img[0:64, 32:96], (16, 16), interpolation=cv2.INTER_AREA))


def test_patch_labels_hand_computed():
    g = PatchGrid(1024, 128, 128, 32)
    mask = np.zeros((1024, 1024), bool)
    mask[130, 5] = True  # one pixel in patch (row 1, col 0)
    mask[127, 127] = True  # last pixel of patch (0, 0)
    mask[1000:1010, 1000:1010] = True  # 100 pixels in patch (7, 7)
    frac = g.lesion_fraction(mask)
    labels = g.labels(frac)
    assert np.flatnonzero(labels).tolist() == [0, 8, 63]
    assert frac[63] == pytest.approx(100 / 128**2) and frac[8] == pytest.approx(1 / 128**2)
    # overlapping grid: the pixel at (130, 5) is in patches (1,0) and (2,0) with stride 64
    g2 = PatchGrid(1024, 128, 64, 32)
    m2 = np.zeros((1024, 1024), bool)
    m2[130, 5] = True
    assert np.flatnonzero(g2.labels(g2.lesion_fraction(m2))).tolist() == [15, 30]
    assert (g.labels(None) == -1).all() and (g.labels(None, healthy_if_unannotated=True) == 0).all()


def test_optic_disc_never_makes_a_patch_diseased(tmp_path):
    img = fundus((96, 64))
    od = save_mask(tmp_path / "od.tif", square_mask((96, 64), 32, 48, r=8))
    rec = FundusRecord("x", save_jpg(tmp_path / "x.jpg", img), masks={"OD": od, "MA": None})
    pre = load_fundus(rec, size=64, structures=("MA", "HE", "EX", "SE", "OD"))
    assert pre.masks["OD"].any()
    assert not pre.lesion_union().any()


def test_fraction_masks_keep_the_lesion_area_that_any_masks_inflate():
    """Shrinking 512 -> 64 px (8 x 8 source pixels per pixel): ``fraction`` keeps the lesion area
    exactly (sum x 64 = source pixels); ``any`` counts every touched pixel whole, so a 3-pixel
    microaneurysm becomes one or two 64-pixel pixels and a blob grows at its boundary."""
    from retinalab.preprocessing.fundus import FovBox, resize_mask

    rng = np.random.default_rng(0)
    src = np.zeros((512, 512), bool)
    for y, x in rng.integers(8, 500, size=(40, 2)):  # microaneurysms of 3 pixels
        src[y, x : x + 3] = True
    src[100:161, 200:263] = True  # an exudate blob of 61 x 63
    box = FovBox(0.0, 0.0, 1.0, 1.0)
    frac = resize_mask(src, box, 64, "fraction")
    anym = resize_mask(src, box, 64)
    assert frac.dtype == np.float32 and 0 <= frac.min() and frac.max() <= 1
    assert frac.sum() * 64 == pytest.approx(src.sum(), rel=1e-5)
    assert np.array_equal(anym, frac > 0)
    assert anym.sum() * 64 > 1.3 * src.sum()
