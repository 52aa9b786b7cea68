"""Ship a model's float32 safetensors as a small float16 pack, and unpack it to float32 again.

    python bench/weights_fp16.py pack   MODEL.safetensors PACK.xz
    python bench/weights_fp16.py unpack PACK.xz MODEL.safetensors

For GPU runs whose carried files are capped (64 MiB per call): all-MiniLM-L6-v2 is 91 MB in
float32, 45 MB in float16 and ~39 MB once the high and low bytes of the float16 values are stored
as separate planes (the high bytes, sign and exponent, compress well) and xz-compressed. Unpacking
upcasts back to float32, so the model loads as usual; its weights are the originals rounded to
float16 (a relative error <= 2^-11), which changes throughput not at all and embeddings slightly:
record that beside any quality figure. Non-float tensors travel unchanged.
"""

from __future__ import annotations

import json
import lzma
import sys

import numpy as np


def pack(source: str, target: str) -> None:
    from safetensors.numpy import load_file

    tensors = load_file(source)
    index, planes, rest = [], [], []
    for name, array in tensors.items():
        if array.dtype == np.float32:
            half = np.ascontiguousarray(array, dtype=np.float16).ravel()
            planes.append(half.view(np.uint8).reshape(-1, 2))
            index.append({"name": name, "shape": list(array.shape), "kind": "fp16", "n": int(half.size)})
        else:
            rest.append(array.tobytes())
            index.append({"name": name, "shape": list(array.shape), "kind": str(array.dtype),
                          "bytes": len(rest[-1])})
    pairs = np.concatenate(planes) if planes else np.zeros((0, 2), np.uint8)
    header = json.dumps(index).encode()
    body = len(header).to_bytes(8, "little") + header + pairs[:, 1].tobytes() + pairs[:, 0].tobytes()
    with open(target, "wb") as f:
        f.write(lzma.compress(body + b"".join(rest), preset=6))


def unpack(source: str, target: str) -> None:
    from safetensors.numpy import save_file

    with open(source, "rb") as f:
        data = lzma.decompress(f.read())
    size = int.from_bytes(data[:8], "little")
    index = json.loads(data[8 : 8 + size])
    n_half = sum(e["n"] for e in index if e["kind"] == "fp16")
    begin = 8 + size
    high = np.frombuffer(data, np.uint8, n_half, begin)
    low = np.frombuffer(data, np.uint8, n_half, begin + n_half)
    halves = np.stack([low, high], axis=1).reshape(-1).view(np.float16)
    tensors, at, rest_at = {}, 0, begin + 2 * n_half
    for entry in index:
        if entry["kind"] == "fp16":
            values = halves[at : at + entry["n"]].astype(np.float32)
            tensors[entry["name"]] = values.reshape(entry["shape"])
            at += entry["n"]
        else:
            raw = data[rest_at : rest_at + entry["bytes"]]
            tensors[entry["name"]] = np.frombuffer(raw, entry["kind"]).reshape(entry["shape"]).copy()
            rest_at += entry["bytes"]
    save_file(tensors, target, metadata={"format": "pt"})  # transformers checks the format key


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(sys.argv[2], sys.argv[3])
