"""Geometry (canonical orientation, resampling) and the lesion crop (margin, edges, the way back)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverphase.io.nifti import flip_storage
from liverphase.io.study import Study
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.geometry import (
    corner_points,
    crop_to_points,
    resample_like,
    resample_to_spacing,
    smooth_for_downsampling,
    to_canonical,
)
from liverphase.preprocess.pipeline import crop_box_for, map_to_reference, preprocess_study
from liverphase.preprocess.roi import (
    Box,
    box_from_index,
    box_from_mask,
    frame_of,
    grid_for_box,
    jitter_box,
    lesion_mask_on_reference,
    spacing_grid,
)
from test_preprocess_phantom import phantom_study

SMALL = {"size": (16, 32, 32), "register": False}


@pytest.fixture(scope="module")
def study() -> Study:
    return phantom_study("r0", shape=(32, 64, 72), spacing=(2.0, 2.0, 3.0), seed=3)


def _contains(outer, inner, tol: float = 1e-6) -> bool:
    return bool(
        np.all(np.asarray(outer.lo) <= np.asarray(inner.lo) + tol)
        and np.all(np.asarray(outer.hi) >= np.asarray(inner.hi) - tol)
    )


def test_flipped_storage_gives_same_canonical_array(study: Study) -> None:
    img = study.phases["ART"]
    for axes in [(0,), (1, 2), (0, 1, 2)]:
        flipped = flip_storage(img, axes)
        a, b = to_canonical(img), to_canonical(flipped)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert b.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9)


def test_resample_to_spacing_keeps_extent_and_values(study: Study) -> None:
    img = study.phases["PV"]
    iso = resample_to_spacing(img, (1.0, 1.0, 1.0))
    assert iso.GetSpacing() == (1.0, 1.0, 1.0)
    assert iso.GetSize() == (144, 128, 96)  # (x, y, z): 72*2, 64*2, 32*3
    np.testing.assert_allclose(corner_points(iso).min(0), corner_points(img).min(0), atol=1e-6)
    # the lesion centre keeps its value (linear interpolation of smooth anatomy)
    centre = (-30.0, -5.0, 10.0)
    v_old = sitk.Resample(img, [1, 1, 1], sitk.Transform(), sitk.sitkLinear, centre, (1, 1, 1))
    assert iso.GetPixelID() == sitk.sitkFloat32
    got = iso[iso.TransformPhysicalPointToIndex(centre)]
    assert abs(got - sitk.GetArrayFromImage(v_old).item()) < 15  # noise, half-voxel offsets
    aniso = resample_to_spacing(study.mask, (4.0, 1.0, 2.0), "nearest")
    assert aniso.GetSpacing() == (2.0, 1.0, 4.0) and aniso.GetSize() == (72, 128, 24)
    assert set(np.unique(sitk.GetArrayFromImage(aniso))) == {0, 1}
    assert aniso.GetPixelID() == study.mask.GetPixelID()


def test_resample_like_applies_transform(study: Study) -> None:
    img = study.phases["PV"]
    shift = sitk.TranslationTransform(3, (4.0, 0.0, 0.0))  # sample 2 voxels further along x
    moved = sitk.GetArrayFromImage(resample_like(img, img, shift, "linear", -1024))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    np.testing.assert_allclose(moved[:, :, :-2], arr[:, :, 2:], atol=1e-3)
    assert np.all(moved[:, :, -2:] == -1024)


def test_crop_holds_whole_lesion_and_margin(study: Study) -> None:
    cfg = PreprocessConfig(**SMALL, margin_mm=10.0)
    out = preprocess_study(study, cfg)
    frame = frame_of(study.reference)
    lesion = box_from_mask(study.mask, frame)
    grid = out.grid
    assert _contains(grid.box, lesion.expand(10.0))
    np.testing.assert_allclose(grid.box.extent, lesion.extent + 20.0, atol=1e-6)
    assert out.image.shape == (4, 3, 16, 32, 32) and out.mask.shape == (16, 32, 32)
    # every lesion voxel of the crop mask is >= margin from the crop border (minus a voxel)
    idx = np.argwhere(out.mask > 0)
    spacing_zyx = np.asarray(grid.scale_mm)
    size = np.asarray(out.mask.shape)
    assert np.all(idx.min(0) * spacing_zyx >= 10.0 - spacing_zyx)
    assert np.all((size - 1 - idx.max(0)) * spacing_zyx >= 10.0 - spacing_zyx)
    # and it holds the whole lesion: same volume as the input mask (within discretisation)
    vol_in = sitk.GetArrayFromImage(study.mask).sum() * np.prod(study.mask.GetSpacing())
    vol_out = (out.mask > 0).sum() * np.prod(spacing_zyx)
    assert vol_out == pytest.approx(vol_in, rel=0.15)
    assert out.meta["scale_mm"] == pytest.approx(list(spacing_zyx))
    assert out.meta["lesion_size_mm"] == pytest.approx(list(lesion.extent[::-1]))
    assert out.meta["warnings"] == []


def test_lesion_at_the_edge_pads_instead_of_failing() -> None:
    # the phantom volume spans x in [-63, 63] mm: a lesion centred at -60 leaves it
    edge = phantom_study(
        "e0",
        shape=(32, 64, 64),
        spacing=(2.0, 2.0, 3.0),
        lesion_centre=(-60.0, -5.0, 10.0),
        lesion_radius=8.0,
    )
    out = preprocess_study(edge, PreprocessConfig(**SMALL))
    assert out.image.shape == (4, 3, 16, 32, 32)
    assert any("edge" in w for w in out.meta["warnings"])
    # voxels left of the scan are padding (-1024 HU → 0 in every window), in every phase
    grid = out.grid
    x_mm = grid.origin[0] + np.arange(32) * grid.spacing[0]
    outside = x_mm < -63.0 - grid.spacing[0]
    assert outside.any() and np.all(out.image[..., outside] == 0.0)
    assert out.mask.sum() > 0 and np.isfinite(out.image).all()


def test_bbox_source_matches_mask_box(study: Study) -> None:
    arr = sitk.GetArrayFromImage(study.mask)
    nz = np.nonzero(arr)
    bbox = (*(int(a.min()) for a in nz), *(int(a.max()) + 1 for a in nz))
    with_bbox = Study("b", dict(study.phases), mask=None, bbox=bbox, reference_phase="PV")
    g1 = crop_box_for(with_bbox, PreprocessConfig(**SMALL, roi_source="bbox"))
    g2 = crop_box_for(study, PreprocessConfig(**SMALL))
    assert g1 == g2
    # the box is physical: the mask stored with flipped axes gives the same one
    flipped = flip_storage(study.mask, (0, 2))
    assert frame_of(flip_storage(study.reference, (0, 2))) == frame_of(study.reference)
    box = box_from_index(study.reference, bbox, frame_of(study.reference))
    box_flipped = box_from_mask(flipped, frame_of(study.reference))
    np.testing.assert_allclose(box.lo, box_flipped.lo, atol=1e-5)
    np.testing.assert_allclose(box.hi, box_flipped.hi, atol=1e-5)


def test_keep_aspect_gives_equal_spacing(study: Study) -> None:
    cfg = PreprocessConfig(**SMALL, keep_aspect=True)
    grid = crop_box_for(study, cfg)
    assert np.ptp(grid.spacing) < 1e-9
    assert _contains(grid.box, box_from_mask(study.mask, frame_of(study.reference)).expand(10.0))


def test_jitter_keeps_lesion_inside_and_is_seeded(study: Study) -> None:
    lesion = box_from_mask(study.mask, frame_of(study.reference))
    boxes = [jitter_box(lesion, np.random.default_rng(i), (1.2, 1.6), 1.0) for i in range(50)]
    assert all(_contains(b, lesion) for b in boxes)
    assert len({b.lo for b in boxes}) == 50
    cfg = PreprocessConfig(**SMALL, roi_source="mask_jitter", seed=4)
    assert crop_box_for(study, cfg) == crop_box_for(study, cfg)  # seeded by config + case
    assert crop_box_for(study, cfg) != crop_box_for(study, cfg, np.random.default_rng(1))


def test_map_back_to_reference_grid(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**{**SMALL, "size": (32, 64, 64)}))
    back = map_to_reference(out.mask, out.meta, study.reference, "nearest")
    assert back.GetSize() == study.reference.GetSize()
    a = sitk.GetArrayFromImage(back) > 0
    b = sitk.GetArrayFromImage(study.mask) > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.9
    ones = map_to_reference(np.ones(out.mask.shape, np.float32), out.meta, study.reference)
    inside = sitk.GetArrayFromImage(ones)
    assert inside.max() == pytest.approx(1.0) and (inside > 0).sum() < inside.size / 4


def test_lesion_probability_maps_back_as_predict_writes_it(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**{**SMALL, "size": (32, 64, 64)}))
    prob = out.mask.astype(np.float32)
    truth = sitk.GetArrayFromImage(study.mask) > 0
    back = lesion_mask_on_reference(prob, out.meta["crop"], study.reference)
    assert back.shape == truth.shape and back.dtype == np.uint8
    assert 2 * (back.astype(bool) & truth).sum() / (back.sum() + truth.sum()) > 0.9
    # a spurious blob in a crop corner is dropped (largest component), and probabilities of
    # 0.4 are below the threshold however they resample
    noisy = prob.copy()
    noisy[:3, :3, :3] = 1.0
    assert (lesion_mask_on_reference(noisy, out.meta["crop"], study.reference) == back).all()
    assert not lesion_mask_on_reference(0.4 * prob, out.meta["crop"], study.reference).any()


def test_crop_to_points_and_smoothing(study: Study) -> None:
    img = study.phases["PV"]
    pts = np.array([[-40.0, -20.0, 0.0], [-10.0, 5.0, 20.0]])
    sub = crop_to_points(img, pts, margin_mm=2.0)
    assert sub.GetSize() < img.GetSize()
    for p in pts:  # the points are inside the sub-image, with the margin
        idx = np.asarray(sub.TransformPhysicalPointToContinuousIndex(tuple(p)))
        assert np.all(idx >= 1) and np.all(idx <= np.asarray(sub.GetSize()) - 2)
    same = smooth_for_downsampling(sub, sub.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(sub))
    smooth = smooth_for_downsampling(sub, np.asarray(sub.GetSpacing()) * 4)
    assert (
        np.diff(sitk.GetArrayFromImage(smooth), axis=2).std()
        < 0.5 * np.diff(sitk.GetArrayFromImage(sub).astype(np.float32), axis=2).std()
    )


def test_grid_for_box_tiles_the_box(study: Study) -> None:
    box = box_from_mask(study.mask, frame_of(study.reference)).expand(5.0)
    grid = grid_for_box(box, (8, 16, 20))
    assert grid.size == (20, 16, 8)
    np.testing.assert_allclose(grid.box.lo, box.lo, atol=1e-9)
    np.testing.assert_allclose(grid.box.hi, box.hi, atol=1e-9)
    np.testing.assert_allclose(np.asarray(grid.spacing) * grid.size, box.extent)


def test_union_and_spacing_grid(study: Study) -> None:
    frame = frame_of(study.reference)
    lesion = box_from_mask(study.mask, frame)
    shifted = Box(tuple(np.add(lesion.lo, 30.0)), tuple(np.add(lesion.hi, 30.0)), lesion.direction)
    both = lesion.union(shifted)
    assert _contains(both, lesion) and _contains(both, shifted)
    assert np.allclose(both.extent, lesion.extent + 30.0)
    grid = spacing_grid(both, 1.0)
    assert np.allclose(grid.box.lo, both.lo) and np.allclose(grid.box.hi, both.hi)
    # about the spacing asked for (here 1 mm, whatever the scan's), never more than max_size an axis
    assert np.allclose(grid.spacing, 1.0, rtol=0.1)
    xyz = spacing_grid(both, (2.0, 2.0, 3.0))
    assert np.allclose(xyz.spacing, (2.0, 2.0, 3.0), rtol=0.1)
    assert max(spacing_grid(both, 1.0, max_size=8).size) == 8


def test_outside_box_is_the_crop_margin() -> None:
    from liverphase.preprocess.roi import outside_box

    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    crop = Box((0.0, 0.0, 0.0), (10.0, 20.0, 10.0), identity)
    grid = grid_for_box(crop, (5, 20, 10))  # z 2 mm, y 1 mm, x 1 mm voxels
    ring = outside_box(grid, Box((2.0, 4.0, 2.0), (8.0, 16.0, 8.0), identity))
    assert ring.shape == (5, 20, 10)
    # voxel centres inside: x 2.5..7.5 (6), y 4.5..15.5 (12), z 3, 5, 7 (3)
    assert (~ring).sum() == 6 * 12 * 3
    assert not ring[2, 10, 5] and ring[0, 10, 5] and ring[2, 0, 5] and ring[2, 10, 9]
