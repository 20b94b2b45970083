"""The real ``runpod`` SDK (pinned) in a virtualenv of its own, under the repository's gitignored ``.cache/``.

``test.sh`` runs this file before pytest, so that the one-time build (a minute or more on a loaded machine)
is not counted against a test's timeout; the ``runpod_python`` fixture calls :func:`build` too, for runs of
pytest alone. A lock makes parallel test processes build it once.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

RUNPOD_VERSION = "1.12.0"
VENV = Path(__file__).resolve().parents[2] / ".cache" / f"runpod-{RUNPOD_VERSION}"


def build() -> Path:
    """The venv's python, after building the venv if no complete one is there."""
    python = VENV / "bin" / "python"
    done = VENV / ".complete"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f".runpod-{RUNPOD_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            f"runpod=={RUNPOD_VERSION}"], check=True)
            done.write_text(RUNPOD_VERSION)
    return python


if __name__ == "__main__":
    print(build())
