import json
import shutil
import subprocess

import pytest
from conftest import loopback_sshd, run_cli

from compressor.exporters.profile import SCHEMA, import_trtexec_times, profile_models
from compressor.exporters.report import write_report
from compressor.exporters.table import backend_available

TEACHER = "resnet_6blocks:ngf=16,norm=instance"
STUDENT = "resnet_6blocks:ngf=16,norm=instance,width=0.25"


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory):
    d = tmp_path_factory.mktemp("prof")
    docs = []
    for threads in (1, 2):
        out = d / f"profile_t{threads}.json"
        res = run_cli(
            [
                "profile",
                TEACHER,
                STUDENT,
                "--backend",
                "torch,ort-cpu,ort-cuda,tensorrt",
                "--size",
                "64",
                "--batch",
                "1",
                "--warmup",
                "2",
                "--iters",
                "5",
                "--threads",
                threads,
                "--out",
                out,
                "--quiet",
            ],
            cwd=d,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        docs.append(out)
    return d, docs


def test_profile_document(two_machines):
    _, docs = two_machines
    doc = json.loads(docs[0].read_text())
    assert doc["schema"] == SCHEMA
    env = doc["environment"]
    for k in ("cpu", "cores", "threads", "torch_version", "onnxruntime_version", "gemm_peak_macs_per_s", "machine"):
        assert k in env
    assert env["threads"] == 1
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert {(r["backend"], r["role"]) for r in ok} == {
        ("torch", "teacher"),
        ("torch", "student"),
        ("ort-cpu", "teacher"),
        ("ort-cpu", "student"),
    }
    for r in ok:
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] and lat["n"] == 5
        assert r["macs"] > 0 and 0 < r["efficiency"] < 5 and r["peak_memory_mb"] > 0
    missing = [r for r in doc["results"] if r["status"] != "ok"]
    # zoo models have no TensorRT engine, so tensorrt is never timed here; ort-cuda only where a GPU provider is
    expected = {"tensorrt"} | ({"ort-cuda"} if not backend_available("ort-cuda")[0] else set())
    assert {r["backend"] for r in missing} == expected
    assert all(r["reason"] for r in missing)


def test_two_machines_merge_into_one_report(two_machines, tmp_path):
    d, docs = two_machines
    md, page = write_report(docs, [], tmp_path / "rep", "two machines")
    text = md.read_text()
    header = next(l for l in text.splitlines() if l.startswith("| model"))
    assert "1t" in header and "2t" in header
    assert "speed-up" in text.lower() or "Speed-up" in text
    assert "ort-cuda" in text and "Not measured" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 2


def test_report_renders_in_headless_chromium(tmp_path):
    """The report as a browser draws it. Its input is two fixed machines' profiles (the latencies of a live
    measurement move the bars' areas from run to run)."""
    from test_report import HOST, _profile

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    docs = []
    for threads in (1, 2):
        docs.append(tmp_path / f"profile_t{threads}.json")
        docs[-1].write_text(json.dumps(_profile({**HOST, "threads": threads}, noisy=False)))
    _, page = write_report(docs, [], tmp_path / "rep", "render")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,4000",
            f"file://{page}",
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists()
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert arr.std() > 10  # not blank

    def near(rgb):
        return int((np.abs(arr - np.array(rgb, dtype=float)).max(axis=-1) < 30).sum())

    # the latency plot's bars: matplotlib red (teacher) and blue (student)
    assert near((214, 39, 40)) > 500 and near((31, 119, 180)) > 50


def test_trtexec_times_import(tmp_path):
    times = [
        {
            "startHostMs": i,
            "endHostMs": i + 2,
            "latencyMs": 2.0 + 0.1 * (i % 3),
            "computeMs": 1.5,
            "h2dMs": 0.2,
            "d2hMs": 0.3,
        }
        for i in range(20)
    ]
    f = tmp_path / "trtexec_times.json"
    f.write_text(json.dumps(times))
    res = import_trtexec_times(f)
    assert res["latency_ms"]["min"] == pytest.approx(2.0) and res["device_latency_ms"]["p50"] == pytest.approx(1.5)
    doc = profile_models([str(f)], ["trtexec-json"], [1], [256])
    assert doc["results"][0]["status"] == "ok"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    from compressor.errors import UserError

    with pytest.raises(UserError, match="trtexec --exportTimes"):
        import_trtexec_times(bad)


def test_profile_cli_errors(tmp_path):
    res = run_cli(["profile", "no_such_model", "--out", tmp_path / "p.json"], cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no_such_model" in res.stderr
    res = run_cli(["profile", TEACHER, "--backend", "bogus"], cwd=tmp_path)
    assert res.returncode == 2 and "bogus" in res.stderr
    (tmp_path / "exists.json").write_text("{}")
    res = run_cli(["profile", TEACHER, "--out", tmp_path / "exists.json"], cwd=tmp_path)
    assert res.returncode == 2 and "--force" in res.stderr
    res = run_cli(
        ["profile", TEACHER, "--size", "30", "--backend", "torch", "--out", tmp_path / "p.json", "--quiet"],
        cwd=tmp_path,
    )
    assert res.returncode == 0 and "not a multiple of 4" in res.stdout


def test_remote_profile_over_ssh(tmp_path):
    import getpass
    import sys
    from pathlib import Path

    import torch

    with loopback_sshd(tmp_path) as (port, opts):
        from compressor.exporters.formats.onnx import export_onnx
        from compressor.models import build_generator

        onnx_path = tmp_path / "student.onnx"
        export_onnx(build_generator("resnet_6blocks", ngf=4, norm="instance"), onnx_path, torch.zeros(1, 3, 32, 32))
        compress = str(Path(sys.executable).parent / "compress")
        if not Path(compress).exists():
            pytest.skip("the compress console script is not installed (pip install -e .)")
        out = tmp_path / "remote.json"
        res = run_cli(
            [
                "profile",
                onnx_path,
                "--host",
                f"{getpass.getuser()}@127.0.0.1",
                "--port",
                port,
                *[x for o in opts for x in ("--ssh-option", o)],
                "--remote-compress",
                compress,
                "--backend",
                "ort-cpu",
                "--size",
                "32",
                "--iters",
                "3",
                "--warmup",
                "1",
                "--out",
                out,
            ],
            cwd=tmp_path,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        doc = json.loads(out.read_text())
        assert doc["schema"] == SCHEMA and doc["results"][0]["status"] == "ok"
        assert doc["results"][0]["backend"] == "ort-cpu"
