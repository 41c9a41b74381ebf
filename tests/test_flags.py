"""The command-line checks as library calls: the records the ``compress`` commands build check themselves, in the
order of the command's options, with the one-line messages the CLI prints."""

from pathlib import Path

import pytest

from compressor.app.flags import (
    ProfileRequest,
    check_export_flags,
    check_run_device,
    check_student_evaluation,
    csv_list,
)
from compressor.app.pipeline import RunOptions
from compressor.app.stages import Context
from compressor.errors import UserError
from compressor.exporters.export import ExportSpec


def test_profile_request_parses_and_checks_in_option_order(tmp_path):
    req = ProfileRequest(backend="torch, ort-cpu", batch="1,4", size="64", out=tmp_path / "p.json", threads=2)
    assert req.check() is req
    assert (req.backends, req.batches, req.sizes, req.precisions) == (["torch", "ort-cpu"], [1, 4], [64], ["fp32"])
    assert req.remote_args()[-2:] == ["--threads", "2"] and req.profile_kwargs()["batches"] == [1, 4]
    cases = [
        (dict(batch="0", size="x"), "cannot parse 'x'"),  # both lists are parsed before either is bounded
        (dict(batch="0"), "--batch: expected positive integers, got '0'"),
        (dict(size="4"), "--size: 4 is outside 8..8192"),
        (dict(batch="5000"), "--batch: at most 4096, got '5000'"),
        (dict(out=tmp_path), "--out: .* is a folder"),
        (dict(backend="torch,bogus"), "--backend: unknown backend 'bogus'"),
        (dict(precision="fp7", seconds=-1), "--precision"),
        (dict(seconds=-1), "--seconds"),
        (dict(device="tpu"), "--device"),
        (dict(host="-oProxyCommand=x"), "--host"),
    ]
    for kw, msg in cases:
        with pytest.raises(UserError, match=msg):
            ProfileRequest(**{"out": tmp_path / "p.json", **kw}).check()
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(UserError, match="--out: .* exists; pass --force"):
        ProfileRequest(out=tmp_path / "p.json").check()
    ProfileRequest(out=tmp_path / "p.json", force=True).check()


def test_export_spec_checks_its_flags(tmp_path):
    assert check_export_flags(ExportSpec(dynamic=["batch", "hw"], size=64, out=tmp_path)).size == 64
    cases = [
        (dict(precision="fp7", size=1), "--precision: expected fp32, fp16 or int8, got 'fp7'"),
        (dict(trt_versions=(9,)), "--trt-version: expected 10 or 11, got 9"),
        (dict(size=9000), "--size: 9000 is outside"),
        (dict(out=tmp_path / "f"), "--out: .* is not a folder"),
        (dict(data=tmp_path / "missing"), "--data: .* does not exist"),
        (dict(dynamic=csv_list("batch,depth")), "--dynamic: unknown axis 'depth'"),
    ]
    (tmp_path / "f").write_text("")
    for kw, msg in cases:
        with pytest.raises(UserError, match=msg):
            check_export_flags(ExportSpec(**kw))


def test_evaluate_and_run_checks(tmp_path):
    with pytest.raises(UserError, match="neither a run folder"):
        check_student_evaluation(tmp_path, tmp_path, "paired", "AtoB", 64)
    (tmp_path / "student.json").write_text("{}")
    with pytest.raises(UserError, match="needs --data"):
        check_student_evaluation(tmp_path, None, "paired", "AtoB", 64)
    with pytest.raises(UserError, match="--kind must be paired or folder"):
        check_student_evaluation(tmp_path, tmp_path, "paired", "CtoD", 64)
    check_student_evaluation(tmp_path, tmp_path, "folder", "BtoA", 64)
    check_run_device(None)
    with pytest.raises(UserError, match="--device: expected auto, cpu or cuda, got 'cuda:0'"):
        check_run_device("cuda:0")


def test_run_options_are_one_record_the_context_holds():
    opts = RunOptions(force=True, only=["teacher"], recipe_path=Path("r.yaml"))
    assert RunOptions().force is False and RunOptions().nproc == 1 and RunOptions().only is None
    ctx = Context(None, None, None, opts)
    assert ctx.options is opts and Context(None, None, None).options == RunOptions()
