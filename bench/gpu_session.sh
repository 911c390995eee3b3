#!/usr/bin/env bash
# The GPU checks, as one `run` on a lent GPU machine (see /work/.library/device/README.md): tests/gpu (the LoRA
# recipes on CUDA; a request through the pipeline with FORGETD_DEVICE=cuda) and bench/llm_gpu.py. That
# machine's Python has torch, transformers, peft, tokenizers, pyyaml and pytest; what else the pipeline
# imports travels as wheels (Python 3.12, x86-64):
#
#   here, once per checkout:  echo /.whl/ >> .git/info/exclude && bash bench/gpu_session.sh --fetch-wheels
#   there:                    run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=420)
#
# Then copy $OUT's llm_gpu.json/.md into bench/results/ and commit them. About 5 minutes of device time
# (tests/gpu trains the small test LM on the CPU first; the 1.1B model is built five times: npo-lora for
# 10 + 10 + 110 steps, the ga-full baseline for 10 + 110, each saving 2.2 GB). About 13 MB of wheels travel.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch-wheels" ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 cryptography==50.0.2 cffi==2.1.1 \
        pycparser==3.12 typing-extensions==4.16.0
    exit
fi
out="${OUT:-bench/results}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu_machine.txt"
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1 | tee -a "$out/gpu_machine.txt"
python3 -m pytest -q tests/gpu 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
python3 bench/llm_gpu.py --out "$out" 2>&1 | tee "$out/llm_gpu.log"
bench=${PIPESTATUS[0]}
echo "tests/gpu exit $tests, bench/llm_gpu.py exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
