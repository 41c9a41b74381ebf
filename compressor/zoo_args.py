"""The zoo generators' arguments as data: read by the recipe schema, the model builders and the profiler's
zoo specs. Imports nothing, so any layer may use it."""

from __future__ import annotations

# The zoo generators' parameters as data (the schema imports no model; tests check this table against
# compressor.models.ZOO): the multiple every input side must be, and the arguments each accepts.
ZOO_ARCHS: dict[str, dict] = {
    "resnet_9blocks": {"size_multiple": 4},
    "resnet_6blocks": {"size_multiple": 4},
    "unet_128": {"size_multiple": 2**7},
    "unet_256": {"size_multiple": 2**8},
}
ZOO_KWARGS = {
    "input_nc": (1, 64),
    "output_nc": (1, 64),
    "ngf": (1, 1024),
    "norm": ("batch", "instance", "none"),
    "use_dropout": (False, True),
}


def check_zoo_kwargs(arch: str, kwargs: dict, key: str = "kwargs") -> None:
    """Raise ``ValueError`` (one line) when ``kwargs`` are not valid arguments of zoo generator ``arch``."""
    if arch not in ZOO_ARCHS:
        raise ValueError(f"unknown generator {arch!r}; choose one of {', '.join(ZOO_ARCHS)}")
    for name, value in kwargs.items():
        allowed = ZOO_KWARGS.get(name)
        if allowed is None:
            raise ValueError(f"{key}.{name}: unknown argument for {arch}; allowed: {', '.join(ZOO_KWARGS)}")
        shown = repr(value)[:40]
        if name == "norm":
            if value not in allowed:
                raise ValueError(f"{key}.norm: expected one of {', '.join(allowed)} (got {shown})")
        elif name == "use_dropout":
            if not isinstance(value, bool):
                raise ValueError(f"{key}.use_dropout: expected true or false (got {shown})")
        else:
            lo, hi = allowed
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{key}.{name}: expected an integer from {lo} to {hi} (got {shown})")
