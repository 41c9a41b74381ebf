import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
FACADES = (ROOT.parent / "shared" / "datasets" / "facades").resolve()

# Under pytest-xdist (the README's `-n 2`) each worker gets its share of the cores: that many torch threads here
# and in every subprocess, so that two workers never spin-wait on each other's threads.
# OMP_NUM_THREADS, when set, wins (a machine shared with other jobs).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def one_error_line(err: str, code: int, *needles: str, expect: int = 2, skip_warnings: bool = False) -> str:
    """The single ``error: …`` line a refused command printed on stderr ``err``: exit code ``expect``, no traceback,
    every needle in it (``skip_warnings``: ``warning…`` lines beside it are allowed)."""
    assert code == expect, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip() and not (skip_warnings and line.startswith("warning"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def no_consent():
    """No code consent carried in from another test, none carried out."""
    from compressor import trust

    trust.revoke_all()
    yield
    trust.revoke_all()


def load_fuzz():
    """tools/fuzz.py as a module: its corpus builder, recipe and targets (tools/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compressor_fuzz", ROOT / "tools" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_recipe_text(name="tiny", extra="") -> str:
    return f"""
name: {name}
seed: 0
device: cpu
data: {{kind: synthetic, direction: BtoA, size: 32, batch_size: 2, synthetic: {{train: 8, test: 4}}}}
teacher:
  arch: resnet_6blocks
  kwargs: {{ngf: 8, norm: instance}}
  train: {{steps: 6}}
student: {{width: 0.5}}
distill:
  steps: 6
  checkpoint_every: 2
  log_every: 2
  sample_every: 3
  losses: {{srp: {{weight: 10.0, normalize: entries, layers: [encoder, res_mid]}}}}
  discriminator: {{ndf: 8, n_layers: 2}}
evaluate: {{metrics: [psnr, ssim], samples: 2}}
export: {{onnx: {{dynamic: [batch]}}}}
profile: {{backends: [ort-cpu], batch: [1], warmup: 1, iters: 3}}
{extra}
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(tiny_recipe_text())
    return p


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: Ctrl-C at a terminal reaches a process whose
    SIGINT is at its default, even when the test suite itself runs as a background job (which starts with SIGINT
    ignored, and would pass that on: the child would never see the Ctrl-C)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args, cwd=None, timeout=600, env=None):
    """Run the CLI in a subprocess as a user would; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", str(THREADS))
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "compressor"] + [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
    )


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextlib.contextmanager
def loopback_sshd(tmp_path):
    """A loopback sshd for the remote-profiling tests: a throw-away host key, one authorised key, 127.0.0.1."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if not sshd or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server/client is not installed (apt-get install openssh-server)")
    for key in ("host", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / key)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
    os.chmod(tmp_path / "authorized_keys", 0o600)
    port = _free_port()
    (tmp_path / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPidFile {tmp_path / 'sshd.pid'}\nStrictModes no\n"
        "PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(tmp_path / "sshd_config")], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.skip(f"sshd could not start here: {proc.stderr.read()[-300:]}")
                time.sleep(0.1)
        yield port, [f"IdentityFile={tmp_path / 'id'}", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
