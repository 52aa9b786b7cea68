"""``import sparsa`` stays light, and every subpackage imports from an installed sparsa."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUBPACKAGES = ["retrieval", "indexes", "rerank", "rag", "judge", "kg", "kernels", "api", "data",
               "eval", "cli"]


def loaded_modules(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    return set(json.loads(out.stdout.splitlines()[-1]))


HEAVY = {"torch", "transformers", "pyserini", "jnius", "faiss", "ray", "sentence_transformers", "triton"}


def test_import_sparsa_loads_no_heavy_dependency():
    assert not HEAVY & loaded_modules("import sparsa")


def test_the_search_layer_loads_no_heavy_dependency():
    """``sparsa.search`` reaches index classes and encoders through the registries, only when opening one."""
    assert not HEAVY & loaded_modules("from sparsa.search import Retriever, open_retriever")


def test_the_training_pieces_load_no_heavy_dependency():
    """``sparsa.training`` (shared by every trainer) imports torch and peft inside its functions."""
    assert not (HEAVY | {"peft", "accelerate"}) & loaded_modules("import sparsa.training")


def test_subpackages_import_without_java():
    loaded = loaded_modules("\n".join(f"import sparsa.{name}" for name in SUBPACKAGES))
    assert {f"sparsa.{name}" for name in SUBPACKAGES} <= loaded
    assert not {"pyserini", "jnius"} & loaded


REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_FOLDERS = ["api", "indexes", "judge", "kernels", "kg", "rag", "rerank", "retrieval"]


def test_sparsa_installs_no_generic_top_level_module():
    code = "import importlib.metadata as m, json\n" \
           "print(json.dumps(sorted(n for n, d in m.packages_distributions().items() if 'sparsa' in d)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert json.loads(out.stdout) == ["sparsa"]


def test_repo_folders_never_shadow_installed_distributions(tmp_path):
    """From the repo root (sys.path[0] is the root), a bare ``import kernels`` gets the installed one."""
    for name in TOP_LEVEL_FOLDERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("WHO = 'installed'\n")
    code = "\n".join(f"import {name}\nassert {name}.WHO == 'installed', {name}.__file__"
                     for name in TOP_LEVEL_FOLDERS)
    code += f"\nimport sparsa.kernels\nassert sparsa.kernels.__file__.startswith({str(REPO)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(tmp_path)})


def test_repo_folders_are_not_top_level_modules():
    """With no distribution of that name installed, a bare import gets an empty namespace package (what Python
    gives for a folder without ``__init__.py``): no sparsa code, no ``__file__``, no
    version, nothing beneath."""
    for name in TOP_LEVEL_FOLDERS:
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is not None)"
        if subprocess.run([sys.executable, "-c", code], cwd="/", check=False).returncode:
            continue  # installed (Hugging Face's kernels, say): the test above covers it
        probe = (f"import {name} as m\n"
                 "assert m.__file__ is None and getattr(m, '__version__', 'N/A') == 'N/A'\n"
                 f"assert not [a for a in vars(m) if not a.startswith('__')], vars(m)\n"
                 f"try:\n    import {name}.__main__\n"
                 "except ImportError:\n    pass\nelse:\n    raise AssertionError")
        subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)


def test_transformers_imports_from_the_repo_root():
    """transformers 5 imports Hugging Face's ``kernels`` distribution, which our kernels/
    folder once shadowed."""
    code = "import transformers.modeling_utils, sparsa.kernels"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)


def test_plain_pip_install_maps_every_subpackage(tmp_path):
    """``pip install .`` (not editable) must ship the top-level folders as sparsa.<name>."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path), str(REPO)], check=True, capture_output=True)
    assert (sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".dist-info"))
            == ["bin", "sparsa"])
    code = "import sparsa\n" + "\n".join(f"import sparsa.{name}" for name in SUBPACKAGES) + \
           f"\nassert sparsa.__file__.startswith({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", env={"PYTHONPATH": str(tmp_path)})
