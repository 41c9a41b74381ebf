"""Small losses in hostile or careless input: corrupt ONNX files, sizes a model refuses, absurd export sizes,
images too small to be data, and a full disk during ONNX export. Each is one `error:` line, exit 2."""

import errno

import pytest
import torch
from PIL import Image

from compressor.app.cli import main
from compressor.data import FolderDataset
from compressor.errors import DataError
from compressor.exporters.formats.onnx import export_onnx
from compressor.io import DiskWriteError
from compressor.models import build_generator


def _one_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_profile_refuses_a_corrupt_onnx(tmp_path, capsys):
    bad = tmp_path / "student.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf model" * 10)
    line = _one_error(capsys, main(["profile", str(bad), "--backend", "ort-cpu", "--out", str(tmp_path / "p.json")]))
    assert "student.onnx" in line and "not a readable ONNX model" in line
    assert not (tmp_path / "p.json").exists()


def test_profile_refuses_a_size_off_the_models_stride(tmp_path, capsys):
    net = build_generator("resnet_6blocks", ngf=4, norm="instance", init=None)
    path = export_onnx(
        net, tmp_path / "m.onnx", torch.zeros(1, 3, 32, 32), ("batch", "hw"), metadata={"size_multiple": 4}
    )
    line = _one_error(
        capsys, main(["profile", str(path), "--backend", "ort-cpu", "--size", "30", "--out", str(tmp_path / "p.json")])
    )
    assert "--size 30 is not a multiple of 4" in line


def test_export_refuses_an_absurd_size(tmp_path, capsys):
    ckpt = tmp_path / "g.pth"
    torch.save(build_generator("resnet_6blocks", init=None).state_dict(), ckpt)
    line = _one_error(
        capsys,
        main(["export", str(ckpt), "--arch", "resnet_6blocks", "--size", "100000", "--out", str(tmp_path / "out")]),
    )
    assert "--size: 100000 is outside" in line
    assert not (tmp_path / "out" / "student.onnx").exists()


def test_a_1x1_image_is_not_data(tmp_path):
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 100, 50, 50)).save(tmp_path / f"ok{i}.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    ds = FolderDataset(tmp_path, size=16, train=False)
    assert len(ds) == 2 and [p.name for p in ds.skipped] == ["dot.png"]
    with pytest.raises(DataError, match="dot.png: .*too small"):
        FolderDataset(tmp_path, size=16, train=False, strict=True)


def test_onnx_export_on_a_full_disk_says_so(tmp_path, monkeypatch):
    net = build_generator("resnet_6blocks", ngf=4, init=None)
    (tmp_path / "student.onnx").write_bytes(b"earlier")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    with pytest.raises(DiskWriteError, match="write failed .No space left on device.; earlier artifacts are intact"):
        export_onnx(net, tmp_path / "student.onnx", torch.zeros(1, 3, 32, 32))
    assert (tmp_path / "student.onnx").read_bytes() == b"earlier"
    assert not list(tmp_path.glob("*.tmp"))
