import json
import re

import pytest
from conftest import FACADES, ROOT, run_cli, tiny_recipe_text

from compressor.errors import RecipeError
from compressor.recipe import Recipe, apply_overrides, load_recipe, parse_override, schema_reference

DESIGN_EXAMPLE = """
name: facades-unet-w025
seed: 0
device: auto                  # cuda when present, else cpu
data:
  kind: paired                # paired | unpaired | folder | synthetic
  root: ../shared/datasets/facades
  direction: BtoA             # labels -> photo
  size: 256
  batch_size: 1
teacher:
  arch: unet_256              # a zoo name, or: import: mypkg.nets:MyGenerator, kwargs: {...}
  checkpoint: teachers/facades_label2photo.pth
  # train: {steps: 400}       # train a teacher first when you have none (the quickstart does this)
student:
  width: 0.25                 # keep a quarter of every layer's channels
  method: auto                # rebuild (zoo) | prune (Torch-Pruning; any model)
  init: inherit               # inherit the teacher's strongest channels | scratch
distill:
  steps: 20000
  losses:
    gan:   {weight: 1.0, mode: lsgan}
    recon: {weight: 100.0}    # L1 to ground truth (paired data)
    kd:    {weight: 10.0}     # L1 to the teacher's output
    srp:   {weight: 10.0, layers: [encoder]}
  checkpoint_every: 1000
evaluate: {metrics: [fid, kid, psnr, ssim]}
export:
  onnx: {dynamic: [batch]}
  tensorrt: {precision: fp16} # skipped, with a note in the report, where TensorRT is absent
profile: {backends: [torch, ort-cpu], batch: [1, 4], size: [256]}
"""


@pytest.mark.skipif(not FACADES.exists(), reason="../shared/datasets/facades is absent")
def test_design_example_validates_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the example's data root is relative to the repository root
    p = tmp_path / "example.yaml"
    p.write_text(DESIGN_EXAMPLE)
    r = load_recipe(p)
    assert r.teacher.arch == "unet_256" and r.student.width == 0.25
    assert r.export.tensorrt.precision == "fp16"
    res = run_cli(["validate", p], cwd=ROOT)
    # the example names a teacher checkpoint that is not shipped: validate reports it as the one error
    assert res.returncode == 2 and res.stderr.startswith("error: "), res.stderr
    assert "teacher.checkpoint" in res.stderr and "teachers/facades_label2photo.pth" in res.stderr


def test_quickstart_recipe_validates():
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert r.data.kind == "synthetic" and r.teacher.train is not None


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda t: t.replace("student: {width: 0.5}", "studnet: {width: 0.5}"), "studnet"),
        (lambda t: t.replace("student: {width: 0.5}", "student: {width: half}"), "student.width"),
        (lambda t: t.replace("kind: synthetic,", "kind: paired, root: /nonexistent/data,"), "data.root"),
    ],
)
def test_validate_errors_are_one_line_exit_2(tmp_path, edit, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(edit(tiny_recipe_text()))
    res = run_cli(["validate", p])
    assert res.returncode == 2
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0] and lines[0].startswith("error: ")
    assert "Traceback" not in res.stderr


def test_error_names_yaml_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(tiny_recipe_text().replace("student: {width: 0.5}", "student: {width: 1.7}"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    line = next(i for i, l in enumerate(p.read_text().splitlines(), 1) if l.startswith("student:"))
    assert f"{p}:{line}:" in str(e.value) and "student.width" in str(e.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {kind: synthetic\nteacher: [\n")
    with pytest.raises(RecipeError, match=re.escape(str(p)) + r":\d+: YAML syntax error"):
        load_recipe(p)


def test_overrides_parse_yaml_scalars(tiny_recipe):
    r = load_recipe(
        tiny_recipe,
        [
            "student.width=0.25",
            "distill.steps=7",
            "data.flip=true",
            "distill.losses.srp.layers=[encoder]",
            "teacher.checkpoint=null",
        ],
    )
    assert r.student.width == 0.25 and r.distill.steps == 7 and r.data.flip is True
    assert r.distill.losses.srp.layers == ["encoder"] and r.teacher.checkpoint is None
    assert parse_override("a.b=hello") == (["a", "b"], "hello")
    with pytest.raises(RecipeError):
        parse_override("no-equals")
    with pytest.raises(RecipeError):
        load_recipe(tiny_recipe, ["student.width=abc"])
    with pytest.raises(RecipeError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_defaults_and_forbid_extra():
    r = Recipe.model_validate({"name": "x", "data": {"kind": "synthetic"}, "teacher": {"arch": "unet_256"}})
    assert r.distill.losses.recon.weight == 100.0 and r.distill.losses.gan.mode == "lsgan"
    with pytest.raises(Exception):
        Recipe.model_validate({"name": "x", "data": {"kind": "synthetic"}, "teacher": {"arch": "unet_256"}, "bogus": 1})


def test_teacher_needs_exactly_one_source(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(tiny_recipe_text().replace("arch: resnet_6blocks", "arch: resnet_6blocks\n  import: a.b:c"))
    with pytest.raises(RecipeError, match="exactly one"):
        load_recipe(p)


def test_readme_recipe_reference_in_sync():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Recipe reference", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(.*?)\s*\|", line)
        if m:
            documented[m.group(1)] = m.group(2).strip("` ")
    schema = {k: d for k, d, _ in schema_reference()}
    assert set(documented) == set(schema), set(schema) ^ set(documented)
    for k, d in schema.items():
        assert documented[k] == d, f"{k}: README says {documented[k]!r}, schema default is {d!r}"


def test_readme_defaults_are_what_a_recipe_gets():
    """The README's defaults against a real validated recipe, not against the generator that wrote the table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Recipe reference", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"\|\s*`([^`]+)`\s*\|\s*`([^`]*)`\s*\|", section))
    recipe = Recipe.model_validate({"name": "x", "data": {"kind": "synthetic"}, "teacher": {"arch": "unet_256"}})
    dump = recipe.model_dump(mode="json", by_alias=True)
    checked = 0
    for key, default in documented.items():
        if default in ("required", "(section)") or key in ("data.kind", "teacher.arch"):  # set above
            continue
        node = dump
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and default != "null":
            continue  # a key inside an optional section that is off by default (teacher.train, export.tensorrt)
        shown = node if isinstance(node, str) else json.dumps(node)
        assert shown == default, f"{key}: README says {default!r}, a recipe gets {shown!r}"
        checked += 1
    assert checked > 50
    for key, value in (
        ("distill.losses.recon.weight", "100.0"),
        ("distill.losses.kd.weight", "10.0"),
        ("distill.losses.cycle.weight", "10.0"),
    ):
        assert documented[key] == value


def test_validate_checks_feature_taps(tmp_path):
    p = tmp_path / "taps.yaml"
    p.write_text(tiny_recipe_text().replace("layers: [encoder, res_mid]", "layers: [encoder, model.99]"))
    res = run_cli(["validate", p])
    assert res.returncode == 2 and "distill.losses.srp.layers" in res.stderr and "model.99" in res.stderr
    p.write_text(tiny_recipe_text().replace("layers: [encoder, res_mid]", "layers: [model.4]"))
    assert run_cli(["validate", p]).returncode == 0  # module names work as well as aliases
    p.write_text(tiny_recipe_text().replace("layers: [encoder, res_mid]", "layers: [model.24]"))  # Tanh: 4-D
    assert run_cli(["validate", p]).returncode == 0


def test_a_new_option_at_its_default_leaves_digests_unchanged():
    """Adding student.round_channels must not make earlier runs and their checkpoints look changed."""
    from compressor.recipe import DIGEST_NEUTRAL_DEFAULTS, parse_recipe

    r = parse_recipe("name: x\ndata: {kind: synthetic}\nteacher: {arch: resnet_6blocks}\n")
    for path, default in DIGEST_NEUTRAL_DEFAULTS.items():
        *parents, field = path.split(".")
        node = r
        for key in parents:
            node = getattr(node, key)
        if path == "distill.losses.srp.normalize":  # what every recipe written before the option resolves to
            assert (
                parse_recipe(
                    "name: x\ndata: {kind: synthetic}\nteacher: {arch: resnet_6blocks}\n"
                    "distill: {losses: {srp: {weight: 10}}}\n"
                ).distill.losses.srp.normalize
                == default
            )
        else:  # the value a recipe that never names the option gets, as digests see it
            value = getattr(node, "import_" if field == "import" else field)  # the key as written, the field's name
            assert (value.model_dump(mode="json") if hasattr(value, "model_dump") else value) == default, path
    assert "round_channels" not in json.dumps(r._hashed())
    r2 = parse_recipe(
        "name: x\ndata: {kind: synthetic}\nteacher: {arch: resnet_6blocks}\nstudent: {round_channels: 8}\n"
    )
    assert r2.section_hash("student") != r.section_hash("student") and r2.digest() != r.digest()


def test_srp_weight_set_before_normalize_existed_keeps_its_meaning_and_digest(caplog):
    from compressor.recipe import parse_recipe
    from compressor.terms import SRP_DEFAULT_WEIGHT

    head = "name: x\ndata: {kind: synthetic}\nteacher: {arch: resnet_6blocks}\n"
    new = parse_recipe(head)
    assert new.distill.losses.srp.normalize == "rows" and new.distill.losses.srp.weight == SRP_DEFAULT_WEIGHT
    with caplog.at_level("WARNING", logger="compressor.recipe"):
        old = parse_recipe(head + "distill: {losses: {srp: {weight: 12.5}}}\n")
        assert not caplog.records  # parsing says nothing: a recipe with an error prints that error alone
        old.distill.losses.log_old_weights()  # the distill stage's first step
        parse_recipe(head + "distill: {losses: {srp: {weight: 12.5}}}\n").distill.losses.log_old_weights()
    assert old.distill.losses.srp.normalize == "entries"  # the old per-entry scale: the run means what it meant
    notes = [r.getMessage() for r in caplog.records if "srp.weight 12.5" in r.getMessage()]
    assert len(notes) == 1 and "normalize: rows" in notes[0]  # one line saying how to convert
    # the digest of an old recipe is what it was (normalize: entries stays out of it); the new scale changes it
    explicit = parse_recipe(head + "distill: {losses: {srp: {weight: 12.5, normalize: entries}}}\n")
    assert "normalize" not in json.dumps(old._hashed()) and explicit.digest() == old.digest()
    rows = parse_recipe(head + "distill: {losses: {srp: {weight: 12.5, normalize: rows}}}\n")
    assert rows.section_hash("distill") != old.section_hash("distill")
    # a saved recipe reads back with the same meaning
    assert parse_recipe(new.to_yaml()).distill.losses.srp.normalize == "rows"
    assert parse_recipe(old.to_yaml()).distill.losses.srp.normalize == "entries"
