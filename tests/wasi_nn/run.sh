#!/usr/bin/env bash
# Builds a base model and two adapters with known replies (nnpipe pipeline), then runs the C test.
# run.sh NNPIPE WASI_NN_TEST LIB full|cycles
set -euo pipefail
nnpipe=$1 test=$2 lib=$3 mode=$4
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
(cd "$work" && "$nnpipe" pipeline --session w >pipeline.log 2>&1) || { cat "$work/pipeline.log"; exit 1; }
run=$work/runs/w
r1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"]["trained_reply"])' "$run/generate/summary.json")
r2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"]["continual_trained_reply"])' "$run/generate/summary.json")
model=$run/init_model/model a1=$run/finetune_lora/adapter a2=$run/finetune_lora_continual/adapter
case $mode in
  full) exec "$test" "$lib" full "$model" "$a1" "$a2" "$r1" "$r2" ;;
  cycles) exec "$test" "$lib" cycles "$model" "$a1" "${WASI_NN_CYCLES:-1000}" ;;
esac
