"""Settings in one place, read once from ``SPARSA_*`` environment variables.

Every default works offline: models come from the local model cache, data from ``shared/data``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
    if not all(_known_device(part.strip()) for part in device.split(",")):
        raise ConfigError(f"SPARSA_DEVICE={device!r}: expected one of {', '.join(_DEVICES)}, cuda:N, a "
                          "list such as cuda:0,cuda:1 (the exact splade engine, sharded) or cuda:all")
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


_ALL_GPUS = ("cuda:all", "cuda:*")


def _known_device(device: str) -> bool:
    return device in _DEVICES or device in _ALL_GPUS or (device.startswith("cuda:")
                                                          and device[5:].isdigit())


def is_device_list(device: str | Sequence[str]) -> bool:
    """Whether a device spec may name several devices (a list, ``a,b``, ``cuda:all``)."""
    return not isinstance(device, str) or "," in device or device.strip() in _ALL_GPUS


def resolve_devices(device: str | Sequence[str]) -> list[str]:
    """The devices a spec names, checked: ``cpu``, ``cuda``, ``cuda:N``, ``auto``, a comma list of those
    (``cuda:0,cuda:1``; ``cpu,cpu`` shards on the CPU) or a list; ``cuda:all`` (or ``cuda:*``) is every
    GPU torch sees. Only the exact learned-sparse engine takes several (one shard per device)."""
    parts = [p.strip() for p in (device.split(",") if isinstance(device, str) else device)]
    if not parts or not all(parts):
        raise ConfigError(f"device {device!r}: empty device name")
    for part in parts:
        if not _known_device(part):
            raise ConfigError(f"unknown device {part!r}: expected cpu, cuda, cuda:N, auto, a comma list "
                              "such as cuda:0,cuda:1, or cuda:all")
    if len(parts) > 1 and any(p in _ALL_GPUS for p in parts):
        raise ConfigError(f"device {device!r}: cuda:all already names every GPU; list no others")
    if all(p == "cpu" for p in parts):
        return parts  # no torch needed
    import torch

    count = torch.cuda.device_count()
    if parts[0] in _ALL_GPUS:
        if count == 0:
            raise ConfigError(f"device {parts[0]!r}: torch sees no GPU")
        return [f"cuda:{i}" for i in range(count)]
    resolved = [resolve_device(p) for p in parts]
    for p in resolved:
        if p.startswith("cuda") and count == 0:
            raise ConfigError(f"device {p!r}: torch sees no GPU")
        if p.startswith("cuda:") and int(p[5:]) >= count:
            raise ConfigError(f"device {p!r}: torch sees {count} GPU{'s' if count != 1 else ''} "
                              f"(cuda:0 to cuda:{count - 1})")
    return resolved
