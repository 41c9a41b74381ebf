"""Each generator loss term's value and share of the student's gradient norm, old weighting against new.

    python tools/bench_losses.py [--images 4] [--size 256] [--data /work/shared/datasets/facades]

For resnet_9blocks and unet_256 teachers (ngf 64, batch norm, the zoo's normal initialisation from seed 0) and
their width-0.25 students (the default recipe: rebuilt, inheriting the teacher's strongest channels), on the first
``--images`` facades test pairs (labels -> photo) at 256², with the default recipe's losses (recon 100, KD 10,
GAN 1 on the default 3-layer PatchGAN). Each term's value and the L2 norm of its gradient on the student's
parameters come from ``Trainer.generator_terms`` and ``Trainer.term_grad_norms`` (each term alone), averaged over
the images. Rows:

* **old**: SRP weight 10 on the per-entry scale (``normalize: entries``), the taps as they were: the ResNet
  ``encoder`` after its ReLU (``model.9``), the U-Net norm outputs as an in-place LeakyReLU left them;
* **new**: the defaults now: SRP weight ``SRP_DEFAULT_WEIGHT`` per row (``normalize: rows``), pre-activation taps.

Acceptance: SRP's share within 10x of KD's (ratio between 0.1 and 10) for both families.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from compressor.data import make_dataset  # noqa: E402
from compressor.features import resolve_taps  # noqa: E402
from compressor.models import build_generator  # noqa: E402
from compressor.recipe import DataSpec, DiscriminatorSpec, LossesSpec  # noqa: E402
from compressor.slim import make_student  # noqa: E402
from compressor.terms import SRP_DEFAULT_WEIGHT  # noqa: E402
from compressor.train import Direction, Trainer, TrainSetup  # noqa: E402

FACADES = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "facades"
UNET_ENC, UNET_MID = "model.model.1.model.3.model.3", "model.model.1.model.3"  # skip blocks at depth 4 and 3


def cases(layers_unet: list[str]) -> list[dict]:
    """(family, arm) cases: the SRP layers as module names (old) or aliases (new)."""
    old_unet = {"encoder": f"{UNET_ENC}.model.3.model.0", "mid": f"{UNET_MID}.model.3.model.0"}  # LeakyReLU outputs
    return [
        {
            "arch": "resnet_9blocks",
            "arm": "old",
            "layers": ["model.9"],
            "srp": {"weight": 10.0, "normalize": "entries"},
        },
        {"arch": "resnet_9blocks", "arm": "new", "layers": ["encoder"], "srp": {}},
        {
            "arch": "unet_256",
            "arm": "old",
            "layers": [old_unet[a] for a in layers_unet],
            "srp": {"weight": 10.0, "normalize": "entries"},
        },
        {"arch": "unet_256", "arm": "new", "layers": layers_unet, "srp": {}},
    ]


def measure(case: dict, dataset, n_images: int, size: int) -> dict:
    torch.manual_seed(0)
    teacher = build_generator(case["arch"], ngf=64, norm="batch").eval()
    student, _ = make_student(teacher, 0.25, example_input=torch.zeros(1, 3, size, size))
    losses = LossesSpec.model_validate({"srp": {**case["srp"], "layers": case["layers"]}})
    taps = resolve_taps(teacher, case["layers"])
    setup = TrainSetup(
        kind="paired",
        directions=[Direction("G", student, teacher, "input", "target")],
        dataset=dataset,
        losses=losses,
        steps=1,
        taps=taps,
        srp_layers=list(case["layers"]),
        disc_spec=DiscriminatorSpec().model_dump(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(setup, Path(tmp), torch.device("cpu"))
        d = setup.directions[0]
        values: dict[str, float] = {}
        norms: dict[str, float] = {}
        for i in range(n_images):
            item = dataset[i]
            batch = {"input": item["input"][None], "target": item["target"][None]}
            terms, _, _ = trainer.generator_terms(d, batch)
            for k, v in trainer.term_grad_norms(terms).items():
                norms[k] = norms.get(k, 0.0) + v / n_images
                values[k] = values.get(k, 0.0) + float(terms[k].detach()) / n_images
    total = sum(norms.values())
    return {
        "values": values,
        "norms": norms,
        "shares": {k: v / total for k, v in norms.items()},
        "weights": {k: trainer.term_weight(k) for k in norms},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--data", default=str(FACADES))
    ap.add_argument("--unet-layers", default="encoder,mid", help="U-Net SRP taps (the pix2pix recipe's)")
    args = ap.parse_args()
    spec = DataSpec(kind="paired", root=args.data, direction="BtoA", size=args.size)
    dataset = make_dataset(spec, Path(args.data), "test", 0, max_items=args.images)
    print(
        f"loss terms at {args.size}², {args.images} facades test pairs, width-0.25 students, torch "
        f"{torch.__version__}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}"
    )
    print("value / gradient L2 norm on the student's parameters (share of the sum of the terms' norms)")
    ratios = {}
    for case in cases(args.unet_layers.split(",")):
        t0 = time.perf_counter()
        r = measure(case, dataset, args.images, args.size)
        cells = []
        for k in ("G/recon", "G/kd", "G/gan", "G/srp"):
            if k in r["values"]:
                cells.append(
                    f"{k.split('/')[1]} x{r['weights'][k]:g}: {r['values'][k]:.3g} / {r['norms'][k]:.3g} "
                    f"({100 * r['shares'][k]:.2g}%)"
                )
        ratio = r["norms"].get("G/srp", 0.0) / r["norms"]["G/kd"]
        ratios[(case["arch"], case["arm"])] = ratio
        layers = ",".join(case["layers"])
        print(f"{case['arch']} [{case['arm']}: srp on {layers}] ({time.perf_counter() - t0:.0f} s)")
        print("   " + "; ".join(cells))
        print(f"   SRP grad / KD grad = {ratio:.3g} (1/{1 / ratio:.3g})" if ratio > 0 else "   SRP grad 0")
    ok = all(0.1 <= ratios[(a, "new")] <= 10 for a in ("resnet_9blocks", "unet_256"))
    print(
        f"acceptance (new weighting: SRP grad within 10x of KD's for both families, default SRP weight "
        f"{SRP_DEFAULT_WEIGHT:g} per row): {'holds' if ok else 'FAILS'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
