#!/usr/bin/env bash
# The GPU check of issue #16, for a machine with an NVIDIA GPU and no network (e.g. the H200 lent to sessions).
# NOT RUN ON A GPU YET: prepared and run here on the CPU only (its non-GPU parts are tested).
#
#   scripts/gpu_check.sh [stage ...]     stages: env tests precision bench bench-base job collect (default: all)
#
# Each stage writes a JSON piece under $PIECES (default $OUT/gpu-pieces when $OUT is set, else
# results/gpu-pieces); `collect` joins them into results/bench-gpu.json (copied to $OUT when set). Stages can
# run in separate calls (each well under 10 minutes on an H200), as long as $PIECES survives between them.
#
# Python: $PYTHON (default python3; on the lent H200 it holds CUDA torch, transformers, peft, pandas...). The
# project pins transformers 5.24.0 and peft 0.21.2; where the machine has others, carry their wheels in
# .gpu-wheels/ (prepare here: `scripts/gpu_check.sh fetch-wheels`, then name .gpu-wheels in the run's carry):
# they are installed into .gpu-site/ and put first on PYTHONPATH. Java (caption metrics), gradio (the app's
# tests) and Chromium (browser tests) may be missing there: then the caption job and bench fall back to VQA,
# and the tests that need them fail at collection or at their first use, which the tests piece records.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIECES=${PIECES:-${OUT:+$OUT/gpu-pieces}}
PIECES=${PIECES:-results/gpu-pieces}
BASE_DIR=${BASE_DIR:-/tmp/vlpeft-blip-base}
BENCH_STEPS=${BENCH_STEPS:-10}
BASE_BATCH=${BASE_BATCH:-32}
mkdir -p "$PIECES"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [ "${1:-}" = fetch-wheels ]; then  # on a machine with a package index: the pinned wheels to carry
  rm -rf .gpu-wheels && mkdir -p .gpu-wheels
  .venv/bin/python -m pip download --no-deps -d .gpu-wheels transformers==5.24.0 peft==0.21.2
  du -sh .gpu-wheels
  exit 0
fi

if compgen -G ".gpu-wheels/*.whl" >/dev/null; then
  "$PYTHON" -m pip install --quiet --no-deps --no-index --target .gpu-site .gpu-wheels/*.whl
  export PYTHONPATH="$PWD/.gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if command -v java >/dev/null; then TASK=caption; else TASK=vqa; fi

stage_env() {
  "$PYTHON" - "$PIECES/environment.json" "$TASK" <<'EOF'
import importlib, json, platform, shutil, subprocess, sys
out, task = sys.argv[1], sys.argv[2]
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "java": shutil.which("java"),
        "chromium": shutil.which("chromium"), "task_for_caption_free_stages": task, "packages": {}}
for name in ("transformers", "peft", "safetensors", "tokenizers", "gradio", "gradio_client", "pycocoevalcap",
             "datasets", "pandas", "plotly", "yaml", "ray", "playwright", "pytest"):
    try:
        info["packages"][name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as exc:  # missing, or broken by a version clash: both are worth recording
        info["packages"][name] = f"missing ({type(exc).__name__})"
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
except OSError:
    info["nvidia_smi"] = None
json.dump(info, open(out, "w"), indent=2)
print(json.dumps(info, indent=2))
EOF
}

stage_tests() {  # the suite on CUDA (runs choose --device auto, so CUDA); browser tests need Chromium
  set +e
  "$PYTHON" -m pytest -q -m "not browser" -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$PIECES/junit.xml" 2>&1 | tee "$PIECES/pytest.log" | tail -40
  code=${PIPESTATUS[0]}
  set -e
  "$PYTHON" - "$PIECES" "$code" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
pieces, code = sys.argv[1], int(sys.argv[2])
root = ET.parse(f"{pieces}/junit.xml").getroot()
suite = root if root.tag == "testsuite" else root[0]
failed = [f"{case.get('classname')}::{case.get('name')}: {(case[0].get('message') or '')[:200]}"
          for case in suite.iter("testcase") if len(case) and case[0].tag in ("failure", "error")]
summary = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
json.dump({"exit_code": code, **summary, "failed": failed,
           "last_line": open(f"{pieces}/pytest.log").read().strip().splitlines()[-1]},
          open(f"{pieces}/tests.json", "w"), indent=2)
EOF
}

stage_precision() {
  "$PYTHON" -m training gpu-check precision --device cuda --out "$PIECES/precision.json" >/dev/null || true
  "$PYTHON" -m training gpu-check build-base --out "$BASE_DIR"
  "$PYTHON" -m training gpu-check precision --device cuda --base-model "$BASE_DIR" --batch-size 4 \
    --out "$PIECES/precision-base.json" >/dev/null || true
  "$PYTHON" - "$PIECES" <<'EOF'
import json, sys
pieces = sys.argv[1]
merged = {"embedded": json.load(open(f"{pieces}/precision.json")),
          "blip_base_size": json.load(open(f"{pieces}/precision-base.json"))}
json.dump(merged, open(f"{pieces}/precision.json", "w"), indent=2)
for name, part in merged.items():
    print(name, "ok" if part["ok"] else "NOT OK", [(m["method"], m["ok"], m["fast_paths_ok"]) for m in part["methods"]])
EOF
}

stage_bench() {  # the embedded default at its default batch (32)
  "$PYTHON" -m training bench --json --device cuda --task "$TASK" --compare-tasks "$TASK" --steps "$BENCH_STEPS" \
    --parts train,compare,eval >"$PIECES/bench-default.json"
}

stage_bench-base() {  # the BLIP-base-size model, every method and full fine-tuning at batch $BASE_BATCH
  [ -d "$BASE_DIR" ] || "$PYTHON" -m training gpu-check build-base --out "$BASE_DIR"
  "$PYTHON" -m training bench --json --device cuda --task "$TASK" --compare-tasks "$TASK" --steps "$BENCH_STEPS" \
    --batch-size "$BASE_BATCH" --base-model "$BASE_DIR" --parts train,compare >"$PIECES/bench-base.json"
}

stage_job() {
  "$PYTHON" -m training gpu-check job --task "$TASK" --out "$PIECES/job.json" >/dev/null || true
  "$PYTHON" -c "import json; j = json.load(open('$PIECES/job.json')); print(j['state'], j['reason'], j['device'])"
}

stage_collect() {
  "$PYTHON" -m training gpu-check collect --pieces "$PIECES" --out results/bench-gpu.json >/dev/null
  if [ -n "${OUT:-}" ]; then cp results/bench-gpu.json "$OUT/"; fi
  echo "wrote results/bench-gpu.json"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(env tests precision bench bench-base job collect)
for stage in "${stages[@]}"; do
  echo "== $stage ($(date -u +%H:%M:%S))"
  "stage_$stage"
done
