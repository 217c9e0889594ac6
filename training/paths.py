"""Where things live: the repository's assets and the user's data directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "scene-blip"
RESULTS_DIR = REPO_ROOT / "results"


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
