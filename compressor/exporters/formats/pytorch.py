"""PyTorch: the reference row. Its file is the weights as safetensors (a student folder's own file is kept), and its
backends run the model in eager mode or through ``torch.compile`` (:class:`compressor.exporters.runtimes.TorchRunner`).
"""

from __future__ import annotations

import time

from compressor.io import staged

from ..records import record
from ..rows import Backend, Format, Request

_RUNNER = "compressor.exporters.runtimes:TorchRunner"
_TORCH = dict(
    precisions=("fp32", "fp16", "bf16"),
    requires=("torch",),
    extra="pip install torch",
    plan=True,
    make="a run or student folder, or a zoo name",
)


def export_torch(req: Request) -> dict:
    """The weights as safetensors, with the metadata as strings (an existing file, e.g. a student folder's, is
    kept): the row every other format is compared with."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    if not req.path.exists():
        state = {k: v.detach().cpu().contiguous() for k, v in req.model.state_dict().items()}
        with staged(req.path) as tmp:
            save_file(state, str(tmp), metadata={k: str(v) for k, v in (req.metadata or {}).items()})
    return record(
        req.path, "torch", "fp32", parity={"max_abs": 0.0, "against": "itself"}, seconds=time.perf_counter() - t0
    )


FORMAT = Format(
    "torch",
    ".safetensors",
    ("fp32",),
    export_torch,
    backends=(
        Backend("torch", _RUNNER, "torch", "cpu", devices=("cuda",), help="PyTorch eager (the reference)", **_TORCH),
        Backend(
            "torch-compile",
            _RUNNER,
            "torch",
            "cpu",
            devices=("cuda",),
            options=(("compile", True),),
            help="PyTorch with torch.compile",
            **_TORCH,
        ),
    ),
    requires=("torch",),
    extra="pip install torch",
    in_recipe=False,
    order=0,
    help="PyTorch weights (safetensors): the reference",
)
