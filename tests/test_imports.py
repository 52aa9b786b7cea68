"""``import sparsa`` stays light, and every subpackage imports from an installed sparsa."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUBPACKAGES = ["retrieval", "indexes", "rerank", "rag", "kernels", "api", "data", "eval", "cli"]


def loaded_modules(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_sparsa_loads_no_heavy_dependency():
    heavy = {"torch", "transformers", "pyserini", "jnius", "faiss", "ray", "sentence_transformers", "triton"}
    assert not heavy & loaded_modules("import sparsa")


def test_subpackages_import_without_java():
    loaded = loaded_modules("\n".join(f"import sparsa.{name}" for name in SUBPACKAGES))
    assert {f"sparsa.{name}" for name in SUBPACKAGES} <= loaded
    assert not {"pyserini", "jnius"} & loaded


def test_no_generic_top_level_modules_installed():
    code = "import importlib.util as u\nfor m in ('api', 'kernels', 'retrieval', 'indexes', 'rag', 'rerank'):\n" \
           "    s = u.find_spec(m)\n    assert s is None, (m, s.origin)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_plain_pip_install_maps_every_subpackage(tmp_path):
    """``pip install .`` (not editable) must ship the top-level folders as sparsa.<name>."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path), str(repo)], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "sparsa"]
    code = "import sparsa\n" + "\n".join(f"import sparsa.{name}" for name in SUBPACKAGES) + \
           f"\nassert sparsa.__file__.startswith({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", env={"PYTHONPATH": str(tmp_path)})
