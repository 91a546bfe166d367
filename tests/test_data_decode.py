"""Robust decoding: 16-bit, gray, palette, alpha converted; truncated, empty, tiny files skipped."""
import cv2
import numpy as np
import pytest
from PIL import Image

from maskdcpt.data import decode
from maskdcpt.data.decode import SkipImage, read_image, to_float


def test_16bit_png_keeps_precision_and_rgb_order(tmp_path):
    bgr = np.zeros((40, 50, 3), np.uint16)
    bgr[3, 4] = (1000, 40000, 65535)  # B, G, R as OpenCV writes them
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), bgr)
    image = read_image(str(path))
    assert image.dtype == np.uint16 and image.shape == (40, 50, 3)
    pixel = to_float(image[3:4, 4:5])[0, 0]
    np.testing.assert_allclose(pixel, [65535 / 65535, 40000 / 65535, 1000 / 65535], rtol=1e-6)


def test_gray_becomes_three_equal_channels(tmp_path):
    gray = np.arange(40 * 40, dtype=np.uint32).reshape(40, 40).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    image = read_image(str(tmp_path / "g.png"))
    assert image.shape == (40, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)
    # NIQE scores a gray file as gray: with keep_gray it stays (H, W), colour files are unchanged
    np.testing.assert_array_equal(read_image(str(tmp_path / "g.png"), keep_gray=True), gray)
    cv2.imwrite(str(tmp_path / "c.png"), np.dstack([gray, gray // 2, gray // 3]))
    assert read_image(str(tmp_path / "c.png"), keep_gray=True).shape == (40, 40, 3)


def test_alpha_is_composited_on_white(tmp_path):
    bgra = np.zeros((40, 40, 4), np.uint8)
    bgra[..., :3] = (0, 0, 200)  # red in RGB
    bgra[:, :10, 3] = 255  # opaque
    bgra[:, 10:20, 3] = 0  # transparent → white
    bgra[:, 20:, 3] = 128  # half
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    image = read_image(str(tmp_path / "a.png"))
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(image[0, 15], [255, 255, 255])
    a = 128 / 255
    np.testing.assert_allclose(image[0, 30], np.round([200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)]), atol=1)


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_palette_images_give_their_colours(tmp_path, suffix):
    indices = (np.arange(48 * 48).reshape(48, 48) % 3).astype(np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 10, 20, 250] + [0] * (768 - 9)
    im = Image.fromarray(indices, "P")
    im.putpalette(palette)
    im.save(tmp_path / f"p.{suffix}")
    image = read_image(str(tmp_path / f"p.{suffix}"))
    assert image.shape == (48, 48, 3)
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(image[0, 2], [10, 20, 250])


def _jpeg_bytes(size=64):
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_bad_files_raise_typed_skips(tmp_path):
    cases = {
        "truncated.jpg": (_jpeg_bytes()[:700], "truncated"),
        "empty.png": (b"", "empty"),
        "garbage.png": (b"this is not an image at all" * 10, "undecodable"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SkipImage) as info:
            read_image(str(tmp_path / name))
        assert info.value.reason == reason and info.value.path.endswith(name)
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(SkipImage, match=r"too small \(10x10 < 32\)"):
        read_image(str(tmp_path / "tiny.png"), min_size=32)
    with pytest.raises(SkipImage, match="missing"):
        read_image(str(tmp_path / "absent.png"))
    (tmp_path / "whole.jpg").write_bytes(_jpeg_bytes())
    assert read_image(str(tmp_path / "whole.jpg"), min_size=64).shape == (64, 64, 3)


@pytest.mark.parametrize("jpeg_decoder", ["opencv", "pil"])
def test_trailing_data_decodes_and_only_a_real_truncation_is_skipped(tmp_path, monkeypatch, jpeg_decoder):
    # "pil": the path taken where OpenCV pads a cut JPEG with gray instead of refusing it
    monkeypatch.setattr(decode, "opencv_pads_truncated_jpeg", lambda: jpeg_decoder == "pil")
    whole = _jpeg_bytes(96)
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(whole, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    # A phone's motion photo: the JPEG, then 8 KB of video (no end-of-image marker among its last bytes).
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(np.random.default_rng(1).integers(0, 255, 8180, dtype=np.uint8))
    assert b"\xff\xd9" not in video
    (tmp_path / "motion.jpg").write_bytes(whole + video)
    image = read_image(str(tmp_path / "motion.jpg"))
    assert image.shape == (96, 96, 3)
    assert np.abs(image.astype(int) - expected).max() <= (0 if jpeg_decoder == "opencv" else 2)
    png = cv2.imencode(".png", np.ascontiguousarray(expected[..., ::-1]))[1].tobytes()
    (tmp_path / "trailing.png").write_bytes(png + video)
    np.testing.assert_array_equal(read_image(str(tmp_path / "trailing.png")), expected)
    for cut in (len(whole) // 2, len(whole) - 2):  # half the scan data; only the end-of-image marker
        (tmp_path / "cut.jpg").write_bytes(whole[:cut])
        with pytest.raises(SkipImage) as info:
            read_image(str(tmp_path / "cut.jpg"))
        assert info.value.reason == "truncated", cut
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(SkipImage, match="truncated"):
        read_image(str(tmp_path / "cut.png"))


def test_to_float_ranges():
    assert to_float(np.full((2, 2, 3), 255, np.uint8)).max() == 1.0
    assert to_float(np.full((2, 2, 3), 65535, np.uint16)).max() == 1.0
    with pytest.raises(ValueError, match="unsupported dtype"):
        to_float(np.zeros((2, 2, 3), np.int32))
