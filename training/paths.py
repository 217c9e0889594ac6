"""Where things live: the embedded assets, the precomputed results and the user's data directory."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the checkout; for an installed package, its site-packages


def _bundled(name: str) -> Path:
    """assets/ or results/: inside the package when installed from a wheel (see pyproject.toml's package-dir),
    else beside the packages in a checkout or an editable install."""
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else REPO_ROOT / name


ASSETS_DIR = _bundled("assets")
DEFAULT_MODEL_DIR = ASSETS_DIR / "scene-blip"
RESULTS_DIR = _bundled("results")


def data_home() -> Path:
    """The project's data directory: $VLPEFT_HOME, else /data/vlpeft on a Space with storage, else ~/.vlpeft."""
    env = os.environ.get("VLPEFT_HOME")
    if env:
        home = Path(env)
    elif Path("/data").is_dir() and os.access("/data", os.W_OK):
        home = Path("/data/vlpeft")
    else:
        home = Path.home() / ".vlpeft"
    home.mkdir(parents=True, exist_ok=True)
    return home
