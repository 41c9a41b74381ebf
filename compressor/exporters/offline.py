"""Nothing leaves the machine: OpenVINO's and NNCF's usage telemetry is off for every use of the toolkit.

Both send anonymous usage statistics to Google Analytics through the ``openvino_telemetry`` package unless the
user opted out (``opt_in_out --opt_out``, which writes a consent file under ``~/intel``), and keep a usage count
and a client id under ``~/intel``. Both run without that package and then send nothing (``openvino.tools.ovc``
falls back to its ``telemetry_stub``, NNCF to its ``NNCFTelemetryStub``): :func:`no_telemetry` makes the package
unimportable in this process before either is imported, so no statistics are written and no socket is opened. It
runs when the ``exporters`` package is imported, which every command, profile worker and benchmark does before it
touches OpenVINO. Where ``openvino_telemetry`` was imported earlier (a notebook that imported OpenVINO first), its
sending methods are made no-ops and its consent check declines.
"""

from __future__ import annotations

import sys

TELEMETRY_MODULE = "openvino_telemetry"
_SENDERS = ("send_event", "start_session", "end_session", "send_error", "send_stack_trace", "send_opt_in_event")


def _nothing(*args, **kwargs) -> None:
    return None


def _decline(module) -> None:
    """An ``openvino_telemetry`` already imported: every sender a no-op, consent declined from now on."""
    telemetry = getattr(module, "Telemetry", None)
    for name in _SENDERS:
        if telemetry is not None and hasattr(telemetry, name):
            setattr(telemetry, name, _nothing)
    try:
        from openvino_telemetry.utils import opt_in_checker  # type: ignore[import-not-found]

        declined = opt_in_checker.ConsentCheckResult.DECLINED
        opt_in_checker.OptInChecker.check = lambda self, *a, **k: declined
    except (ImportError, AttributeError):  # another layout of the package: the senders are off all the same
        pass


def no_telemetry() -> None:
    """Opt out of OpenVINO and NNCF telemetry for this process (see the module docstring). Idempotent."""
    if TELEMETRY_MODULE not in sys.modules:
        sys.modules[TELEMETRY_MODULE] = None  # type: ignore[assignment]  # ``import`` raises ImportError
    elif sys.modules[TELEMETRY_MODULE] is not None:
        _decline(sys.modules[TELEMETRY_MODULE])
