#!/usr/bin/env bash
# The DPO step on one GPU at real model shapes: dpokit (every layout, reference live and cached)
# against TRL's DPOTrainer in the same run, on random-initialised Qwen2-style models (nothing is
# downloaded):
#
#   0.5B: hidden 896,  24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936
#   1.5B: hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960, vocabulary 151,936
#
# bf16, max length 2048, batch 8 pairs, 2 warm-up + 3 measured steps, fresh process per
# configuration. Attention per layout (`--attn auto`, dpokit.kernels): prompt_shared through
# flex_attention with a BlockMask, packed through flash_attention_2 (one row, varlen from position
# ids) when flash-attn is installed and SDPA otherwise, padded and TRL through SDPA; the report's
# "attention" line says what each configuration ran. ATTN=sdpa runs every layout on SDPA instead
# (dense masks for packed/prompt_shared); PROJECTION=liger uses Liger-Kernel's fused linear
# cross-entropy for dpokit's vocabulary projection (pip install 'dpokit[gpu]'). Data: the preference-pair file given as the argument (e.g. the
# HH-RLHF sample), else the benchmark's generated HH-shaped pairs; SEQUENCE_LENGTH=2048 makes
# every row exactly 2048 tokens instead (batch 4). Budget: about 8 minutes on one H200.
#
#   benchmarks/gpu.sh [HH.jsonl]          # GPU run; JSON to $OUT (if set) or benchmarks/results/
#   benchmarks/gpu.sh --smoke [HH.jsonl]  # tiny dimensions on CPU: checks the script end to end
#
# Printed per configuration: tokens/s (real prompt + completion tokens of the rows, padding
# excluded), MFU and peak memory. MFU = model FLOP/s / peak FLOP/s, model FLOPs per step =
# 6 N per trained token + 2 N per token of the reference forward (N = parameters in matmuls,
# the LM head included, the input embedding not; configurations with a cached reference run no
# reference forward and are credited none) + causal attention (4 x layers x width x context per
# token and forward pass, x3 trained, x1 reference); tokens counted once per group, so padding
# and repeated prompts earn nothing. Two peaks: the GPU's nominal dense bf16 peak (PEAK_TFLOPS,
# default 989 for an H100/H200 SXM) and the best measured 8192^3 bf16 matmul.
set -euo pipefail

smoke=0
data=""
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) data="$arg" ;;
  esac
done

here="$(cd "$(dirname "$0")" && pwd)"
out_dir="${OUT:-$here/results}"
mkdir -p "$out_dir"
python="${PYTHON:-python}"
peak_tflops="${PEAK_TFLOPS:-989}"

common=(--arch qwen2 --model-vocab 151936 --reference both --compare trl --json --seed 0
        --attn "${ATTN:-auto}" --projection "${PROJECTION:-chunked}")
if [[ -n "$data" ]]; then
  [[ -f "$data" ]] || { echo "gpu.sh: no such data file: $data" >&2; exit 2; }
  common+=(--data "$data")
fi

if [[ "$smoke" == 1 ]]; then
  # Tiny dimensions, CPU: every code path of the GPU run (Qwen2, GQA, padded vocabulary, every
  # layout with the kernel --attn auto picks (SDPA on CPU), cached reference, TRL, the summary).
  common+=(--device cpu --threads 1 --dtype float32 --max-length 256 --batch-size 2 --steps 1 --warmup 1
           --model-vocab 4096 --vocab-size 512)
  models=("smoke:64:2:4:2:128")
  tag="smoke-cpu"
else
  # two warm-up steps: torch.compile (flex_attention and its block-mask builder) compiles for the
  # first row length and recompiles once, with the length dynamic, at the second
  common+=(--device cuda --dtype bfloat16 --max-length 2048 --steps 3 --warmup 2)
  if [[ -n "${SEQUENCE_LENGTH:-}" ]]; then
    common+=(--sequence-length "$SEQUENCE_LENGTH" --batch-size 4)
  else
    common+=(--batch-size 8)
  fi
  #        name:hidden:layers:heads:kv_heads:intermediate
  models=("qwen2-0.5b:896:24:14:2:4864" "qwen2-1.5b:1536:28:12:2:8960")
  tag="gpu"
fi

for spec in "${models[@]}"; do
  IFS=: read -r name hidden layers heads kv inter <<<"$spec"
  json="$out_dir/$tag-$name.json"
  echo "== $name: hidden $hidden, $layers layers, $heads heads ($kv KV), MLP $inter -> $json" >&2
  start=$SECONDS
  "$python" -m dpokit.bench "${common[@]}" --hidden-size "$hidden" --layers "$layers" --heads "$heads" \
      --kv-heads "$kv" --intermediate-size "$inter" >"$json"
  echo "   ($((SECONDS - start)) s)" >&2
  PEAK_TFLOPS="$peak_tflops" "$python" - "$json" <<'EOF'
import json, os, sys

report = json.load(open(sys.argv[1]))
nominal = float(os.environ["PEAK_TFLOPS"]) * 1e12
s, m = report["setup"], report["machine"]
print(f"{m['gpu'] or m['processor']}: {s['parameters'] / 1e6:.0f}M parameters, {s['dtype']}, batch {s['batch_size']}, "
      f"max length {s['max_length']}, measured matmul peak {report['matmul_peak_flops'] / 1e12:.1f} TFLOP/s")
print(f"{'configuration':<26}{'attention':>18}{'tokens/s':>10}{'pairs/s':>9}{'MFU':>8}{'MFU*':>8}{'peak GB':>9}"
      f"{'x TRL':>8}{'mem x TRL':>10}")
rows = list(report["layouts"].items()) + ([("TRL DPOTrainer", report["trl"])] if "trl" in report else [])
for label, r in rows:
    ratio = report.get("ratios", {}).get(label, {})
    print(f"{label:<26}{r.get('attn', '?'):>18}{r['tokens_per_s']:>10.0f}{r['pairs_per_s']:>9.2f}{100 * r['achieved_flops'] / nominal:>7.1f}%"
          f"{100 * r['flops_fraction']:>7.1f}%{r['peak_memory_mb'] / 1024:>9.2f}"
          + (f"{ratio['pairs_per_s']:>7.2f}x{ratio['peak_memory']:>9.2f}x" if ratio else ""))
for label, f in report.get("failed", {}).items():
    print(f"{label:<26}failed: {f['failed']}")
print("MFU: model FLOP/s over the nominal peak; MFU*: over the measured matmul peak (6N per trained token, "
      "2N per reference-forward token, attention included)")
EOF
done
