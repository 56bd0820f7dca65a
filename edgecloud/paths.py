"""Where edgecloud keeps its files on this machine."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def edgecloud_home() -> Path:
    """Cache root: ``$EDGECLOUD_HOME`` if set, else the user's cache dir (``~/.cache/edgecloud``)."""
    env = os.environ.get("EDGECLOUD_HOME")
    root = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("edgecloud"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Folder holding one converted Hugging Face-style folder per pulled model."""
    path = edgecloud_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
