"""``compress export``: the same export code as the pipeline's export stage, on existing artifacts."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from compressor.errors import UserError

log = logging.getLogger(__name__)


def _load_target(target: Path, arch: Optional[str], trust: bool):
    """(model, recipe or None, out_dir, kind) for a run folder, a student folder or a checkpoint."""
    from compressor.recipe import load_recipe
    from compressor.slim import load_student

    if target.is_dir() and (target / "recipe.resolved.yaml").exists() and (target / "student.json").exists():
        recipe = load_recipe(target / "recipe.resolved.yaml", check_paths=False)
        run_json = target / "run.json"
        if run_json.exists():
            src = json.loads(run_json.read_text()).get("recipe_source")
            if src:
                recipe._base_dir = Path(src).parent
        return load_student(target), recipe, target, "run"
    if target.is_dir() and (target / "student.json").exists():
        return load_student(target), None, target, "student"
    if target.is_file() and target.suffix in (".pth", ".pt", ".safetensors"):
        if not arch:
            raise UserError(f"{target}: a bare checkpoint needs --arch (a zoo name) to rebuild its architecture")
        from compressor.models import apply_state_dict, build_generator, load_state_dict_file

        model = build_generator(arch, init=None)
        state = load_state_dict_file(target, trust=trust, key="export")
        norm_guess = "instance" if not any(k.endswith("running_mean") for k in state) else "batch"
        model = build_generator(arch, init=None, norm=norm_guess)
        apply_state_dict(model, state, source=str(target), key="export")
        return model.eval(), None, target.parent, "checkpoint"
    if not target.exists():
        raise UserError(f"{target}: not found")
    raise UserError(f"{target}: not a run folder, a student folder (student.json) or a .pth/.safetensors file")


def _images(recipe, data: Optional[Path], size: int, n: int, split: str, in_nc: int) -> Optional[torch.Tensor]:
    from compressor.data import FolderDataset, make_dataset

    if data is not None:
        ds = FolderDataset(data, size=size, train=False, max_items=n)
        return torch.stack([ds[i]["input"] for i in range(min(n, len(ds)))])
    if recipe is not None:
        ds = make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), split, recipe.seed, max_items=n)
        key = "A" if recipe.data.kind == "unpaired" else "input"
        return torch.stack([ds[i][key] for i in range(min(n, len(ds)))])
    return None


def export_command(target: Path, *, onnx: bool, trt: bool, precision: str, dynamic: list[str], opset: int,
                   size: Optional[int], out: Optional[Path], emit_trtexec: bool, trt_version: int,
                   data: Optional[Path], calib_images: int, arch: Optional[str], trust_checkpoint: bool) -> dict:
    import compressor
    from compressor.models import size_multiple

    from .onnx import export_checked, parity_inputs
    from .quantize import compare_int8, quantize_onnx
    from .tensorrt import build_engine, emit_trtexec_script, lint_onnx, tensorrt_available
    from .onnx import default_profile

    model, recipe, default_out, kind = _load_target(Path(target), arch, trust_checkpoint)
    out_dir = Path(out) if out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    mult = size_multiple(model)
    size = size or (recipe.data.size if recipe else max(256, mult))
    if size % mult:
        raise UserError(f"--size: {size} is not a multiple of {mult}, which this model needs")
    in_nc = getattr(model, "config", {}).get("input_nc", 3)
    samples = _images(recipe, data, size, 3, "test", in_nc)
    lines = []
    if samples is None:
        samples = torch.rand(3, in_nc, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        lines.append("note: no images given (--data); parity uses random inputs")
    onnx_path = out_dir / "student.onnx"
    result = {"lines": lines}
    meta = {"producer": "compressor", "toolkit_version": compressor.__version__, "size_multiple": mult,
            "size_rule": f"H and W multiples of {mult}" if "hw" in dynamic else f"H = W = {size}",
            "input_size": size, "width": (getattr(model, "student_plan", {}) or {}).get("width", 1.0),
            "recipe_hash": recipe.digest() if recipe else ""}
    if "batch" not in dynamic:
        dynamic = ["batch"] + list(dynamic)
    if onnx or not onnx_path.exists():
        par = export_checked(model, onnx_path, parity_inputs(model, samples, size, dynamic), dynamic, opset, 1e-4,
                             meta)
        lines.append(f"wrote {onnx_path} (parity: max abs error {par['max_abs']:.2e} over "
                     f"{len(par['cases'])} input shapes)")
    int8_path = out_dir / "student.int8.onnx"
    if precision == "int8":
        calib = _images(recipe, data, size, calib_images, "train", in_nc)
        if calib is None:
            raise UserError("--precision int8 needs calibration images: pass --data FOLDER (or export a run)")
        target_kind = "tensorrt" if trt else "cpu"
        quantize_onnx(onnx_path, int8_path, [c[None].numpy() for c in calib], target_kind)
        q = compare_int8(onnx_path, int8_path, samples)
        lines.append(f"wrote {int8_path} ({target_kind} INT8, {len(calib)} calibration images): PSNR vs FP32 "
                     f"{q['psnr_vs_fp32']:.1f} dB; latency {q['latency_ms_int8']:.2f} ms vs "
                     f"{q['latency_ms_fp32']:.2f} ms FP32")
        result["int8"] = q
    shapes = default_profile(size, "hw" in dynamic, mult)
    for k in ("min", "opt", "max"):
        shapes["input"][k][1] = in_nc
    if trt:
        lint_src = int8_path if precision == "int8" else onnx_path
        lint = lint_onnx(lint_src, trt_version)
        lines.extend(lint.lines())
        result["lint"] = lint.to_dict()
        if not lint.ok:
            raise UserError(f"{lint_src}: TensorRT {trt_version} would reject this ONNX ({lint.problems[0]['op']}: "
                            f"{lint.problems[0]['problem']}); see the lint above")
        ok, why = tensorrt_available()
        if ok:
            res = build_engine(onnx_path, out_dir / "student.plan", precision, shapes,
                               int8_path if precision == "int8" else None)
            lines.append(f"wrote {out_dir / 'student.plan'} (TensorRT {res['tensorrt_version']}, {precision}, "
                         f"{res['gpu']})")
            from .tensorrt import check_engine

            par = check_engine(out_dir / "student.plan", onnx_path, [s[None].numpy() for s in samples], precision)
            result["tensorrt_parity"] = par
            lines.append(f"TensorRT vs ONNX Runtime: max abs {par['max_abs']:.2e}, PSNR {par['psnr_min']:.1f} dB "
                         f"(limit {par['limit']}) - passed")
        else:
            lines.append(f"TensorRT engine skipped: {why}")
    if emit_trtexec:
        script = emit_trtexec_script(out_dir, onnx_path, trt_version, precision, shapes,
                                     int8_path if precision == "int8" else None)
        lines.append(f"wrote {script}")
    return result
