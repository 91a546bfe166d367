"""Physical invariants of the weather, moiré and mixed degradation types (ids 6–10, 13–17)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from degradations import degrade, resolve
from degradations.haze import plausible_depth, scatter, transmission
from degradations.mixed import CDD11_COMBINATIONS
from degradations.moire import MOIRE_RANGES
from degradations.rain_streaks import STREAK_RANGES, blend_rain, rain_streak_layer
from degradations.raindrops import DROP_COLUMNS, DROP_RANGES, apply_raindrops, draw_drops
from degradations.rng import make_rng
from degradations.snow import SNOW_RANGES, composite_snow, snow_mask

from conftest import texture as make_texture

MY_TYPES = (
    "haze", "rain_streaks", "raindrops", "rain_streaks_raindrops", "snow", "moire",
    "blur_jpeg", "blur_rain", "blur_lowlight_noise", "lowlight_haze_rain_snow",
)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """96×128 smooth random colour scene in [0.1, 0.9] (non-square on purpose)."""
    rng = np.random.default_rng(7)
    base = cv2.resize(rng.random((12, 16, 3), dtype=np.float32), (128, 96), interpolation=cv2.INTER_CUBIC)
    return np.clip(0.1 + 0.8 * base, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """128×128 gray texture with structure at the scale of a raindrop (σ 2 px), luminance in [0, 1]."""
    return make_texture(128, 2.0, seed=3, gray=1.0, contrast=None)


# ----------------------------------------------------------------------------- haze


def test_haze_pixels_lie_between_clean_and_airlight(scene):
    for seed in range(3):
        out, params = resolve("haze").fn(scene.copy(), 0.8, make_rng(seed), dict(resolve("haze").ranges))
        airlight = np.array(params["airlight"], dtype=np.float32)
        lo = np.minimum(scene, airlight) - 1e-5
        hi = np.maximum(scene, airlight) + 1e-5
        assert ((out >= lo) & (out <= hi)).all()
        assert 0.0 < params["transmission_min"] <= params["transmission_mean"] <= 1.0
        assert all(0.7 - 0.05 <= a <= 1.0 for a in airlight)
        # the hazy pixel is exactly the convex mix J·t + A·(1 − t) with one t per pixel
        t = (out - airlight) / (scene - airlight)
        ok = np.abs(scene - airlight) > 0.05
        t_spread = np.where(ok.all(axis=2), t.max(axis=2) - t.min(axis=2), 0.0)
        assert float(t_spread.max()) < 1e-3


def test_haze_transmission_monotone_in_beta_and_depth(scene):
    depth, _ = plausible_depth(scene, make_rng(1), dict(resolve("haze").ranges))
    assert depth.shape == scene.shape[:2] and 0.0 < depth.min() and depth.max() <= 1.0 + 1e-6
    previous = np.ones_like(depth)
    for beta in (0.1, 0.5, 1.0, 2.0, 4.0):
        t = transmission(depth, beta)
        assert (t > 0).all() and (t <= 1).all()
        assert (t <= previous + 1e-7).all() and (t < previous).mean() > 0.99
        previous = t
    # far (top) is hazier than near (bottom) on average: the vertical-ramp cue
    t = transmission(depth, 1.0)
    assert t[: len(t) // 4].mean() < t[-len(t) // 4 :].mean()
    assert np.allclose(scatter(scene, np.ones_like(depth), np.ones(3)), scene)


def test_haze_same_seed_thicker_with_level(scene):
    spec = resolve("haze")
    errors = [np.abs(spec.fn(scene.copy(), lv, make_rng(4), dict(spec.ranges))[0] - scene).mean() for lv in (0, 0.5, 1)]
    assert errors[0] < errors[1] < errors[2]


# ----------------------------------------------------------------------------- rain streaks


def test_rain_streaks_only_brighten(scene):
    spec = resolve("rain_streaks")
    for seed in range(4):
        for level in (0.2, 1.0):
            out, params = spec.fn(scene.copy(), level, make_rng(seed), dict(spec.ranges))
            assert (out >= scene - 1e-6).all(), (seed, level, params["blend"])
            assert (out > scene + 0.05).any()


@pytest.mark.parametrize("mode", ["screen", "add"])
def test_blend_rain_modes(mode, scene):
    rain = np.zeros(scene.shape[:2], np.float32)
    rain[10:20, 30] = 0.5
    out = blend_rain(scene, rain, mode)
    assert np.array_equal(out[rain == 0], scene[rain == 0])
    expected = 1 - (1 - scene[10, 30]) * 0.5 if mode == "screen" else np.minimum(scene[10, 30] + 0.5, 1)
    assert np.allclose(out[10, 30], expected)
    with pytest.raises(ValueError, match="blend"):
        blend_rain(scene, rain, "multiply")


def test_rain_streak_coverage_and_brightness_rise_with_level():
    ranges = dict(STREAK_RANGES)
    coverage, mean = [], []
    for level in (0.0, 0.33, 0.66, 1.0):
        layers = [rain_streak_layer((128, 128), level, make_rng(s), ranges, 0.5)[0] for s in range(4)]
        coverage.append(np.mean([(r > 0.1).mean() for r in layers]))
        mean.append(np.mean([r.mean() for r in layers]))
    assert all(a < b for a, b in zip(coverage, coverage[1:])), coverage
    assert all(a < b for a, b in zip(mean, mean[1:])), mean
    assert coverage[0] > 0.001 and coverage[-1] < 0.6


def test_rain_streaks_are_elongated_along_their_angle():
    """A layer's autocorrelation is long along the streak direction and short across it."""
    ranges = {**STREAK_RANGES, "angle": [0.0, 0.0], "layers": [1, 1]}
    layer, params = rain_streak_layer((128, 128), 1.0, make_rng(0), ranges, 1.0)
    assert params["layers"][0]["angle"] == 0.0
    z = layer - layer.mean()
    ac = np.fft.fftshift(np.fft.ifft2(np.abs(np.fft.fft2(z)) ** 2).real)
    ac /= ac.max()
    c = 64
    assert ac[c + 8, c] > 0.4 and ac[c, c + 8] < 0.1  # vertical streaks: correlated 8 px down, not across


# ----------------------------------------------------------------------------- raindrops


def _lens_ranges() -> dict:
    # a pure lens: no blur, no minification, no distortion, no shading; only the inversion remains
    return {**DROP_RANGES, "minification": [1.0, 1.0], "distortion": [0.0, 0.0], "view_blur": [0.0, 0.0],
            "background_blur": [0.0, 0.0], "rim_darkness": [0.0, 0.0], "highlight": [0.0, 0.0],
            "flatten": [0.0, 0.0], "brighten": [0.0, 0.0], "wobble": [0.0, 0.0], "elongation": 0.0,
            "metaball_prob": 0.0, "count": [6, 6], "radius": [20.0, 20.0], "aspect": [1.0, 1.0]}


def _interiors(image, out, params, flip, scaled=False):
    """Per drop, (output interior, clean patch mirrored through the drop centre or not).

    ``scaled``: the clean patch spans the drop's recorded minification (the wider area the lens
    shows), resampled to the interior's size, and only drops clear of every other drop count
    (where drops merge, the larger one's lens covers the smaller one).
    """
    col = {n: i for i, n in enumerate(params["drop_columns"])}
    table = np.array(params["drops"])
    # a drop and its metaball blob lie within 1.9 radii of its centre
    reach_all = 1.9 * np.maximum(table[:, col["rx"]], table[:, col["ry"]]) + 1
    gaps = np.hypot(table[:, None, col["cx"]] - table[None, :, col["cx"]],
                    table[:, None, col["cy"]] - table[None, :, col["cy"]])
    clear = ((gaps > reach_all[:, None] + reach_all[None]) | np.eye(len(table), dtype=bool)).all(1)
    pairs = []
    for d, alone in zip(params["drops"], clear):
        if scaled and not alone:
            continue
        cx, cy = int(round(d[col["cx"]])), int(round(d[col["cy"]]))
        r = int(0.5 * min(d[col["rx"]], d[col["ry"]]))  # well inside the alpha ramp
        k = d[col["minification"]] if scaled else 1.0
        reach = int(round(r * k))
        if r < 3:
            continue
        if not (reach + 1 <= cx < image.shape[1] - reach - 1 and reach + 1 <= cy < image.shape[0] - reach - 1):
            continue
        got = out[cy - r : cy + r + 1, cx - r : cx + r + 1, 0]
        clean = image[cy - reach : cy + reach + 1, cx - reach : cx + reach + 1, 0]
        if scaled:
            clean = cv2.resize(clean, (2 * r + 1, 2 * r + 1), interpolation=cv2.INTER_AREA)
        pairs.append((got.ravel(), (clean[::-1, ::-1] if flip else clean).ravel()))
    return pairs


def test_raindrops_show_the_scene_inverted(texture):
    """Inside a drop the output correlates with the point-reflected scene, not with the scene itself.
    A plain blur (or a drop showing the scene behind it upright) would give the opposite."""
    ranges = _lens_ranges()
    flipped, upright = [], []
    for seed in range(4):
        out, alpha, params = apply_raindrops(texture.copy(), 0.5, make_rng(seed), ranges)
        for got, ref in _interiors(texture, out, params, flip=True):
            flipped.append(np.corrcoef(got, ref)[0, 1])
        for got, ref in _interiors(texture, out, params, flip=False):
            upright.append(np.corrcoef(got, ref)[0, 1])
    assert len(flipped) >= 10
    assert np.median(flipped) > 0.9, np.median(flipped)
    assert np.median(upright) < 0.5, np.median(upright)


def test_default_raindrops_show_a_wider_inverted_view():
    """With the default lens (minified, fish-eye, blurred, flattened) a drop still shows the
    point-reflected scene of the wider area around it: the flipped, scaled-down neighbourhood
    correlates clearly better than the same neighbourhood upright."""
    rng = np.random.default_rng(5)
    coarse = cv2.GaussianBlur(rng.random((256, 256), dtype=np.float32), (0, 0), 5.0)
    coarse = (coarse - coarse.min()) / (coarse.max() - coarse.min())
    coarse = np.repeat(coarse[..., None], 3, axis=2)
    # default lens at the top level; a few mid-sized drops so that most stand clear of the others
    ranges = {**resolve("raindrops").ranges, "count": [8, 8], "radius": [8.0, 20.0]}
    flipped, upright = [], []
    for seed in range(4):
        out, alpha, params = apply_raindrops(coarse.copy(), 1.0, make_rng(seed), ranges)
        flipped += [np.corrcoef(g, r)[0, 1] for g, r in _interiors(coarse, out, params, flip=True, scaled=True)]
        upright += [np.corrcoef(g, r)[0, 1] for g, r in _interiors(coarse, out, params, flip=False, scaled=True)]
    assert len(flipped) >= 10
    assert np.median(flipped) > 0.5, np.median(flipped)
    assert np.median(flipped) > np.median(upright) + 0.5, (np.median(flipped), np.median(upright))


def test_raindrops_are_transparent():
    """A drop is clear water, not a glossy marble: on a uniform scene it is nearly invisible, a
    little brighter (light gathered from a wide area), with only a thin rim and a faint highlight."""
    flat = np.full((128, 128, 3), 0.4, np.float32)
    spec = resolve("raindrops")
    for level, seed in ((0.3, 0), (1.0, 1), (1.0, 2)):
        out, alpha, params = apply_raindrops(flat.copy(), level, make_rng(seed), dict(spec.ranges))
        dev = (out - flat)[alpha > 0.5]
        assert dev.size > 100
        assert 0.0 < dev.mean() < 0.05, dev.mean()
        assert np.percentile(np.abs(dev), 99) < 0.1 and np.abs(dev).max() < 0.15, np.abs(dev).max()


def test_raindrops_leave_the_background_nearly_unchanged(scene):
    spec = resolve("raindrops")
    for seed in range(3):
        out, alpha, params = apply_raindrops(scene.copy(), 1.0, make_rng(seed), dict(spec.ranges))
        outside = alpha == 0
        assert 0.01 < (alpha > 0.5).mean() < 0.9
        # only the slight defocus (σ ≤ 1 px at 256², less here) acts outside the drops
        assert np.abs(out - scene)[outside].max() < 0.05
        inside = alpha > 0.9
        assert np.abs(out - scene)[inside].mean() > 3 * np.abs(out - scene)[outside].mean()
        assert len(params["drops"]) == DROP_RANGES["count"][1] and len(params["drops"][0]) == len(DROP_COLUMNS)


def test_raindrop_count_size_and_error_rise_with_level(scene):
    spec = resolve("raindrops")
    c_lo, c_hi = DROP_RANGES["count"]
    runs = [spec.fn(scene.copy(), lv, make_rng(0), dict(spec.ranges)) for lv in (0, 0.5, 1)]
    counts = [len(params["drops"]) for _, params in runs]
    assert counts[0] == c_lo and counts[0] < counts[1] < counts[2] == c_hi
    cover = [params["coverage"] for _, params in runs]
    assert cover[0] < cover[1] < cover[2]
    errors = [float(np.mean((out - scene) ** 2)) for out, _ in runs]  # PSNR falls as the level rises
    assert errors[0] < errors[1] < errors[2], errors


def test_raindrop_sizes_are_skewed_small_and_large_drops_sag():
    """Many small drops and few large ones; large drops are elongated downwards (tilted pane)."""
    col = {n: i for i, n in enumerate(DROP_COLUMNS)}
    drops = np.concatenate([draw_drops((256, 256), 1.0, make_rng(s), DROP_RANGES, 1.0) for s in range(5)])
    rx, ry = drops[:, col["rx"]], drops[:, col["ry"]]
    r_lo, r_hi = DROP_RANGES["radius"]
    assert (rx >= r_lo - 1e-4).all() and (rx <= r_hi + 1e-4).all()
    assert (rx < r_lo + (r_hi - r_lo) / 3).mean() > 0.6  # most drops are in the smallest third
    assert (rx > r_lo + 2 * (r_hi - r_lo) / 3).sum() > 0  # but large drops do occur
    large, small = rx > np.percentile(rx, 80), rx < np.percentile(rx, 50)
    assert np.median(ry[large] / rx[large]) > np.median(ry[small] / rx[small]) + 0.05
    # a large drop's second blob hangs below its centre (y grows downwards)
    has_blob = drops[:, col["blob_rx"]] > 0
    below = drops[:, col["blob_cy"]] > drops[:, col["cy"]]
    assert below[large & has_blob].mean() > 0.9


def test_streaks_then_drops_records_both(scene):
    spec = resolve("rain_streaks_raindrops")
    out, params = spec.fn(scene.copy(), 0.6, make_rng(2), dict(spec.ranges))
    assert set(params) == {"streaks", "drops"} and params["streaks"]["layers"] and params["drops"]["drops"]
    # a partial override keeps the other defaults
    sample = degrade(scene, "rain_streaks_raindrops", 0.6, seed=2, drops={"count": [1, 1]})
    assert len(sample.params["drops"]["drops"]) == 1 and "density" in str(sample.params["streaks"])


# ----------------------------------------------------------------------------- snow


def test_snow_composite_lies_between_veiled_background_and_flake_colour(scene):
    ranges = dict(SNOW_RANGES)
    mask, info = snow_mask(scene.shape[:2], 0.8, make_rng(0), ranges)
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and (mask > 0.5).any()
    flake = np.array([0.95, 0.96, 1.0], np.float32)
    veil_color = np.array([0.85, 0.86, 0.9], np.float32)
    out = composite_snow(scene, mask, flake, 0.2, veil_color)
    veiled = scene * 0.8 + veil_color * 0.2
    lo, hi = np.minimum(veiled, flake), np.maximum(veiled, flake)
    assert ((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()
    assert np.allclose(out[mask == 0], veiled[mask == 0])
    # on a background darker than the flakes, snow only brightens
    dark = np.full_like(scene, 0.3)
    assert (composite_snow(dark, mask, flake, 0.0, veil_color) >= dark - 1e-6).all()


def test_snow_coverage_rises_with_level_in_three_layers(scene):
    spec = resolve("snow")
    cover = []
    for level in (0.0, 0.5, 1.0):
        _, params = spec.fn(scene.copy(), level, make_rng(1), dict(spec.ranges))
        assert [layer["name"] for layer in params["layers"]] == ["small", "medium", "large"]
        cover.append(params["coverage"])
    assert cover[0] < cover[1] < cover[2]


# ----------------------------------------------------------------------------- moiré


def _moire_on_gray(pitch: float, size: int = 128) -> np.ndarray:
    ranges = {**MOIRE_RANGES, "pitch": [pitch, pitch], "beat_period": [1000.0, 1000.0], "rotation": [0.0, 0.0],
              "perspective": 0.0, "noise": [0.0, 0.0], "jpeg_quality": [95, 95], "color_shift": [0.0, 0.0]}
    gray = np.full((size, size, 3), 0.5, np.float32)
    out, params = resolve("moire").fn(gray, 1.0, make_rng(0), ranges)
    assert params["pitch"] == pitch
    return out


@pytest.mark.parametrize("pitch", [1.0 / 0.9, 1.0 / 1.1, 1.0 / 1.2])
def test_moire_beat_frequency_follows_the_grid_pitch(pitch):
    """On a flat gray screen the output carries a low-frequency pattern at the aliased frequency
    |1/pitch − 1| cycles/px — nowhere in the input, and moving with the display grid's scale."""
    out = _moire_on_gray(pitch)
    profile = out.mean(axis=0)  # columns: the R/G/B stripes are vertical
    spectrum = np.abs(np.fft.rfft(profile - profile.mean(axis=0), axis=0)).sum(axis=1)
    size = out.shape[1]
    expected_bin = abs(1.0 / pitch - 1.0) * size
    low = spectrum[1 : size // 4]  # below 0.25 cycles/px: far from the stripes themselves
    peak = 1 + int(np.argmax(low))
    assert abs(peak - expected_bin) <= 1.0, (peak, expected_bin)
    assert low.max() > 5 * np.median(low)
    assert out.std() > 0.02  # strong: the input is perfectly flat


def test_moire_keeps_the_scene_registered(scene):
    out = degrade(scene, "moire", 0.3, seed=1).lq
    for c in range(3):
        a = scene[..., c] - scene[..., c].mean()
        b = out[..., c] - out[..., c].mean()
        corr = np.fft.fftshift(np.fft.ifft2(np.conj(np.fft.fft2(a)) * np.fft.fft2(b)).real)
        peak = np.unravel_index(np.argmax(corr), corr.shape)
        assert peak == (scene.shape[0] // 2, scene.shape[1] // 2)
    # away from the pattern the colours are the scene's: the low-pass images agree closely
    lp = lambda x: cv2.GaussianBlur(x, (0, 0), 6)  # noqa: E731
    assert np.abs(lp(out) - lp(scene))[16:-16, 16:-16].mean() < 0.06


def test_moire_strength_rises_with_level():
    gray = np.full((96, 96, 3), 0.5, np.float32)
    stds = [np.mean([degrade(gray, "moire", lv, seed=s).lq.std() for s in range(4)]) for lv in (0.0, 0.5, 1.0)]
    assert stds[0] < stds[1] < stds[2], stds


# ----------------------------------------------------------------------------- mixed


@pytest.mark.parametrize(
    "name, first, last",
    [
        ("blur_jpeg", {"motion_blur"}, {"jpeg"}),
        ("blur_rain", {"rain_streaks", "defocus_blur", "motion_blur"}, {"raindrops"}),
        ("blur_lowlight_noise", {"motion_blur", "defocus_blur"}, {"noise"}),
    ],
)
def test_mixed_params_name_their_components(name, first, last, scene):
    for seed in range(4):
        sample = degrade(scene, name, 0.5, seed=seed)
        comps = sample.params["components"]
        assert comps[0]["type"] in first and comps[-1]["type"] in last
        for comp in comps:
            resolve(comp["type"])  # a real registered type
            assert 0.0 <= comp["level"] <= 1.0 and isinstance(comp["params"], dict)


def test_mixed_component_replays_alone(scene):
    """The recorded component levels reproduce: blur_jpeg's JPEG quality follows its recorded level."""
    sample = degrade(scene, "blur_jpeg", 0.7, seed=3)
    blur, jpeg = sample.params["components"]
    quality_bounds = resolve("jpeg").ranges["quality"]
    expected = round(quality_bounds[0] + (quality_bounds[1] - quality_bounds[0]) * jpeg["level"])
    assert jpeg["params"]["quality"] == expected


def test_cdd11_mixed_type_draws_only_combinations_of_two_or_more(scene):
    """The single combinations (l, h, r, s) are types 12, 6, 7, 10: drawn as id 17 they would be mislabelled."""
    assert set(CDD11_COMBINATIONS) == {"l", "h", "r", "s", "l+h", "l+r", "l+s", "h+r", "h+s", "l+h+r", "l+h+s"}
    assert len(CDD11_COMBINATIONS) == 11
    letters = {"low_light": "l", "haze": "h", "rain_streaks": "r", "snow": "s"}
    seen = set()
    small = scene[:48, :48]
    for seed in range(60):
        params = degrade(small, "lowlight_haze_rain_snow", 0.5, seed=seed).params
        combo = params["combination"]
        assert "+" in combo and combo in CDD11_COMBINATIONS
        assert {letters[c["type"]] for c in params["components"]} == set(combo.split("+"))
        seen.add(combo)
    assert len(seen) == 7  # uniform over the seven: 60 draws miss one with tiny probability
    single = degrade(small, "lowlight_haze_rain_snow", 0.5, seed=0, combinations=["s"]).params
    assert single["combination"] == "s"  # all 11 stay available on request
    with pytest.raises(ValueError, match="combination 'l\\+x'"):
        degrade(small, "lowlight_haze_rain_snow", 0.5, seed=0, combinations=["l+x"])


def test_mixed_component_levels_are_monotone_in_the_mixed_level(scene):
    levels = []
    for level in (0.1, 0.5, 0.9):
        comps = degrade(scene, "blur_rain", level, seed=5).params["components"]
        levels.append([c["level"] for c in comps])
    for a, b in zip(levels, levels[1:]):
        assert all(x < y for x, y in zip(a, b))


# ----------------------------------------------------------------------------- all of mine


@pytest.mark.parametrize("name", MY_TYPES)
def test_determinism_and_seed_sensitivity(name, scene):
    a = degrade(scene, name, 0.6, seed=(1, 2, 3))
    b = degrade(scene, name, 0.6, seed=(1, 2, 3))
    c = degrade(scene, name, 0.6, seed=(1, 2, 4))
    assert np.array_equal(a.lq, b.lq) and a.params == b.params
    assert not np.array_equal(a.lq, c.lq)
    assert a.lq.shape == scene.shape and a.lq.dtype == np.float32
