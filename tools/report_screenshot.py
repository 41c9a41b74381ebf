"""Screenshot a report.html with headless Chromium (for docs/report_example.png).

    python tools/report_screenshot.py runs/quickstart/report.html docs/report_example.png

Chromium captures the window, so the window is made tall and the empty space below the page is cropped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 6000) -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        raise SystemExit("headless Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as td:
        shot = Path(td) / "shot.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={td}/profile",
                f"--screenshot={shot}",
                f"--window-size={width},{height}",
                f"file://{Path(page).resolve()}",
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
        if not shot.exists():
            raise SystemExit("Chromium wrote no screenshot")
        img = Image.open(shot).convert("RGB")
    arr = np.asarray(img)
    rows = np.where((arr < 245).any(axis=(1, 2)))[0]
    bottom = min(arr.shape[0], int(rows.max()) + 40) if rows.size else arr.shape[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    img.crop((0, 0, arr.shape[1], bottom)).quantize(colors=256).save(out, optimize=True)  # a palette PNG: 1/3 the bytes
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
