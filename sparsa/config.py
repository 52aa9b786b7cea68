"""Settings in one place, read once from ``SPARSA_*`` environment variables.

Every default works offline: models come from the local model cache, data from ``shared/data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from sparsa.errors import ConfigError

_DEVICES = ("auto", "cpu", "cuda")


def _default_data_dir() -> Path:
    """``shared/data`` beside the checkout (where CI and developers have it), else ``./data``."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return Path("data").resolve()


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    data_dir: Path
    device: str = "auto"
    log_level: str = "INFO"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def index_dir(self) -> Path:
        return self.home / "indexes"

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)


def settings_from_env(env: dict[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    home = Path(env.get("SPARSA_HOME") or Path.home() / ".cache" / "sparsa").expanduser()
    data_dir = (Path(env["SPARSA_DATA_DIR"]).expanduser()
                if env.get("SPARSA_DATA_DIR") else _default_data_dir())
    device = env.get("SPARSA_DEVICE", "auto")
    if device not in _DEVICES and not device.startswith("cuda:"):
        raise ConfigError(f"SPARSA_DEVICE={device!r}: expected one of {', '.join(_DEVICES)} or cuda:N")
    return Settings(home=home, data_dir=data_dir, device=device,
                    log_level=env.get("SPARSA_LOG_LEVEL", "INFO"))


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """The process-wide settings (cached; tests build their own with :func:`settings_from_env`)."""
    return settings_from_env()


def index_path(name_or_path: str | Path) -> Path:
    """An index folder: a path, or a name under ``$SPARSA_HOME/indexes`` (``scifact-bm25``)."""
    path = Path(name_or_path).expanduser()
    if isinstance(name_or_path, Path) or path.exists() or "/" in name_or_path:
        return path
    return load_settings().index_dir / name_or_path


def dataset_path(name_or_path: str | Path) -> Path:
    """A dataset folder or file: a path, or a name under the data dir (``scifact`` -> shared/data/scifact)."""
    from sparsa.errors import DataFormatError

    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    under_data = load_settings().data_dir / name_or_path
    if under_data.exists():
        return under_data
    raise DataFormatError(path, f"dataset not found (also looked in {load_settings().data_dir})")


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when torch sees a GPU, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
