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
DEFAULT_DATASETS = {"caption": ASSETS_DIR / "datasets" / "scene-caption", "vqa": ASSETS_DIR / "datasets" / "scene-vqa"}
RESULTS_DIR = _bundled("results")
SHIPPED_DIR = ASSETS_DIR / "adapters"  # the adapters the app ships (python -m training ship-adapters)


def data_home() -> Path:
    """Working state on local disk (the job store, runs in progress): $VLPEFT_HOME, else ~/.vlpeft."""
    home = Path(os.environ.get("VLPEFT_HOME") or Path.home() / ".vlpeft")
    home.mkdir(parents=True, exist_ok=True)
    return home


def durable_home() -> Path | None:
    """Where finished runs are published, written whole and once (training/jobs/durable.py): $VLPEFT_DURABLE,
    else /data/vlpeft when /data is writable (a Space's Storage Bucket), else None: runs stay in the data home."""
    env = os.environ.get("VLPEFT_DURABLE")
    if env:
        return Path(env)
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/vlpeft")
    return None
