import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from maskdcpt.evaluation.restore import blend_ramp, read_rgb, restore_image, restore_path, tile_starts


class LocalNet(nn.Module):
    """A real conv net: three 3×3 convolutions (receptive-field radius 3) plus a skip; demands inputs that are
    multiples of its stride, like the windowed backbones."""

    def __init__(self, stride: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.stride = stride
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        assert x.shape[-2] % self.stride == 0 and x.shape[-1] % self.stride == 0, x.shape
        return x + 0.1 * self.body(x)


class Identity(nn.Module):
    stride = 4

    def forward(self, x):
        return x.clone()


def _image(h, w, b=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (3, h, w) if b is None else (b, 3, h, w)
    return torch.rand(shape, generator=g)


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (16, 5)])
def test_odd_sizes_return_the_input_size(shape):
    model = LocalNet()
    img = _image(*shape)
    out = restore_image(model, img)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    batch = _image(*shape, b=2)
    assert restore_image(model, batch).shape == batch.shape


def test_registered_backbone_on_odd_size():
    from maskdcpt.models import create_model

    model = create_model("nafnet_tiny").eval()
    img = _image(37, 53)
    out = restore_image(model, img)
    assert out.shape == (3, 37, 53)
    tiled = restore_image(model, img, tile=32, overlap=8)
    assert tiled.shape == (3, 37, 53)


def test_blend_ramps_of_neighbours_sum_to_one():
    overlap = 16
    rising = blend_ramp(40, overlap, interior_start=True, interior_end=False)[:overlap]
    falling = blend_ramp(40, overlap, interior_start=False, interior_end=True)[-overlap:]
    torch.testing.assert_close(rising + falling, torch.ones(overlap, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.all(rising[: overlap // 4] == 0)  # the margin a local network may get wrong is discarded
    assert torch.all(blend_ramp(40, overlap, False, False) == 1)  # image borders keep full weight


def test_tile_starts_cover_and_end_at_the_border():
    assert tile_starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    assert tile_starts(20, 32, 16) == [0]


@pytest.mark.parametrize("size", [(64, 64), (71, 45), (130, 97)])
def test_tiling_identity_returns_the_input(size):
    img = _image(*size, b=2)
    out = restore_image(Identity(), img, tile=32, overlap=12)
    torch.testing.assert_close(out, img, rtol=0, atol=1e-6)  # weights form a partition of unity, corners too


@pytest.mark.parametrize("tile,overlap", [(32, 16), (48, 24), (64, 16)])
def test_tiled_equals_untiled_for_a_local_network(tile, overlap):
    """Receptive-field radius 3 ≤ overlap // 4: every weighted pixel of every tile has its full context, so the
    blend reproduces the untiled output up to float rounding."""
    model = LocalNet()
    img = _image(101, 77, b=1, seed=3)
    full = restore_image(model, img)
    tiled = restore_image(model, img, tile=tile, overlap=overlap)
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-5)


def test_tiled_differs_when_margin_is_smaller_than_receptive_field():
    # the exactness claim is not vacuous: with overlap 4 (margin 1 < radius 3) the seams show
    model = LocalNet()
    img = _image(101, 77, b=1, seed=3)
    diff = (restore_image(model, img, tile=32, overlap=4) - restore_image(model, img)).abs().max()
    assert diff > 1e-4


def test_bad_tiling_arguments():
    with pytest.raises(ValueError, match="tile must be"):
        restore_image(LocalNet(), _image(64, 64), tile=16, overlap=16)
    with pytest.raises(ValueError, match="expected an image"):
        restore_image(LocalNet(), torch.rand(4, 8, 8))


def test_restore_path_folder_keeps_names_sizes_and_bit_depth(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (21, 30, 3), dtype=np.uint16)
    cv2.imwrite(str(src / "a.png"), img8)
    cv2.imwrite(str(src / "b.png"), img16)
    cv2.imwrite(str(src / "gray.png"), img8[..., 0])
    (src / "notes.txt").write_text("not an image")
    written = restore_path(Identity(), src, tmp_path / "out", tile=32, overlap=8, progress=False)
    assert [p.name for p in written] == ["a.png", "b.png", "gray.png"]
    a = cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(tmp_path / "out" / "b.png"), cv2.IMREAD_UNCHANGED)
    g = cv2.imread(str(tmp_path / "out" / "gray.png"), cv2.IMREAD_UNCHANGED)
    assert a.dtype == np.uint8 and np.array_equal(a, img8)  # identity model: exact 8-bit round trip
    assert b.dtype == np.uint16 and np.array_equal(b, img16)
    assert g.shape == (37, 53, 3) and np.array_equal(g[..., 1], img8[..., 0])


def test_restore_path_single_file_and_errors(tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), np.full((9, 11, 3), 200, np.uint8))
    out = restore_path(LocalNet(), tmp_path / "x.png", tmp_path / "y.png", progress=False)
    assert out == [tmp_path / "y.png"] and read_rgb(out[0])[0].shape == (3, 9, 11)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        restore_path(LocalNet(), tmp_path / "missing.png", tmp_path / "o", progress=False)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        restore_path(LocalNet(), tmp_path / "broken.png", tmp_path / "o", progress=False)


# --- tools/restore.py: what a new user meets ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _restore_tool():
    spec = importlib.util.spec_from_file_location("restore_tool", REPO / "tools" / "restore.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main


@pytest.fixture(scope="module")
def restorer_file(tmp_path_factory):
    from maskdcpt.models import create_model
    from maskdcpt.models.checkpoint import save_restorer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "restorer.safetensors"
    save_restorer(create_model("nafnet_tiny"), path, "nafnet_tiny")
    return path


def test_restore_tool_restores_every_readable_input_and_names_the_rest(tmp_path, restorer_file, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(src / name), rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    (src / "b.png").write_bytes(b"not an image")  # sorts between the good ones: the run must go past it
    whole = cv2.imencode(".jpg", rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))[1].tobytes()
    (src / "d.jpg").write_bytes(whole[: len(whole) // 2])
    main = _restore_tool()
    assert main(["--model", str(restorer_file), "--device", "cpu", str(src), str(tmp_path / "out")]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    err = capsys.readouterr().err
    assert f"skipped {src / 'b.png'}: cannot read image {src / 'b.png'}: undecodable" in err
    assert f"skipped {src / 'd.jpg'}: cannot read image {src / 'd.jpg'}: truncated" in err
    assert "2 of 4 input(s) could not be restored (named above); exit status 1" in err
    # all readable: status 0
    (src / "b.png").unlink()
    (src / "d.jpg").unlink()
    assert main(["--model", str(restorer_file), "--device", "cpu", str(src), str(tmp_path / "out2")]) == 0


def test_restore_tool_refuses_an_output_that_is_a_file_and_weights_that_are_not_a_restorer(tmp_path, restorer_file,
                                                                                           capsys):
    from maskdcpt.models import build_maskdcpt
    from maskdcpt.io import save_weights

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.full((16, 16, 3), 90, np.uint8))
    (tmp_path / "taken").write_text("a file where the output folder should go")
    main = _restore_tool()
    assert main(["--model", str(restorer_file), "--device", "cpu", str(src), str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output ") and "is an existing file" in err and "Traceback" not in err
    # a pre-training encoder export loads into the dense restorer but is not one: refused unless asked
    encoder = tmp_path / "encoder.safetensors"
    save_weights(build_maskdcpt("nafnet_tiny").backbone.state_dict(), encoder,
                 {"format": "maskdcpt-encoder", "model_name": "nafnet_tiny"})
    assert main(["--model", str(encoder), "--device", "cpu", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a restorer but a pre-trained encoder" in err and "--any-format" in err
    assert not (tmp_path / "out").exists()
    assert main(["--model", str(encoder), "--any-format", "--device", "cpu", str(src), str(tmp_path / "out")]) == 0
