#!/usr/bin/env bash
# The WASI-NN tests' driver. `setup` builds a base model and two adapters with known replies
# (nnpipe pipeline) in WORK once; the other modes run a test on them.
# run.sh setup WORK NNPIPE
# run.sh full WORK NNPIPE WASI_NN_TEST LIB
# run.sh cycles WORK WASI_NN_TEST LIB
# run.sh item8 WORK WASI_NN_TEST LIB   (issue 13 item 8: context policy, handle misuse, limits)
# run.sh guest WORK NODE LIB RUN_GUEST_MJS NN_HOST GUEST_WASM   (the wasm guest under node:wasi)
set -euo pipefail
mode=$1 base=$2
shift 2
if [ "$mode" = setup ]; then
  rm -rf "$base" && mkdir -p "$base"
  (cd "$base" && "$1" pipeline --session w >pipeline.log 2>&1) || { cat "$base/pipeline.log"; exit 1; }
  exit 0
fi
[ -f "$base/runs/w/wasi_nn_inference/summary.json" ] || { echo "FAIL: no models in $base (run setup)"; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
run=$base/runs/w
r1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"]["trained_reply"])' "$run/generate/summary.json")
r2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"]["continual_trained_reply"])' "$run/generate/summary.json")
model=$run/pretrain/model a1=$run/finetune_lora/adapter a2=$run/finetune_lora_continual/adapter
case $mode in
  full)
    nnpipe=$1 test=$2 lib=$3
    # The stacked, scaled set merged into the weights by the engine's --merge path.
    merged=$("$nnpipe" infer --model "$model" --lora "$a1" --lora "$a2:0.5" --merge --chat \
      --system "You are a helpful assistant." --prompt "Hi! My name is Arpit." -n 48 --json 2>/dev/null |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("outputs", d)["text"])')
    "$nnpipe" export-gguf --model "$model" --type f16 --out "$work/model.gguf" >/dev/null 2>&1
    # An adapter of another model size (shapes that do not fit).
    (cd "$work" && "$nnpipe" init-model --preset small --seed 5 --out small &&
      "$nnpipe" finetune-lora --model small --data "$run/prepare_data/dataset.json" --max-steps 1 \
        --output-dir small_adapter) >"$work/small.log" 2>&1 || { cat "$work/small.log"; exit 1; }
    # An adapter of another architecture: adapter 1's GGUF with general.architecture "llama".
    python3 - "$run/convert_lora_to_gguf/lora.gguf" "$work/llama_arch.gguf" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
kv = lambda v: b"general.architecture" + struct.pack("<IQ", 8, 5) + v  # type 8 = string
assert b.count(kv(b"qwen2")) == 1, "general.architecture not found"
open(sys.argv[2], "wb").write(b.replace(kv(b"qwen2"), kv(b"llama")))
PY
    WASI_NN_LOG_FILE=$work/wasi_nn.log WASI_NN_WRONG_SHAPE=$work/small_adapter WASI_NN_GGUF=$work/model.gguf \
      WASI_NN_OTHER_ARCH=$work/llama_arch.gguf \
      "$test" "$lib" full "$model" "$a1" "$a2" "$r1" "$r2" "$merged"
    # Each bad adapter was skipped with a warning naming it and why (WASI_NN_LOG_FILE).
    for want in 'lora_adapters\[0\]: skipped: no "path"' '/nonexistent/a.gguf: no such adapter' \
        "$model: no adapter_config.json" '/etc/hostname: not a GGUF LoRA' 'model.gguf: general.type is "model"' \
        'small_adapter: .*shape .* (adapter for another model' \
        'llama_arch.gguf: adapter architecture "llama" does not match the model.s "qwen2"' '\[info\] model .* loaded as graph'; do
      grep -q "\[warning\].*$want\|$want" "$work/wasi_nn.log" || { echo "FAIL: log lacks: $want"; exit 1; }
      echo "ok: logged: $want"
    done ;;
  item8) test=$1 lib=$2
    # Adapter 1's GGUF with adapter.lora.alpha (FLOAT32, type 6) = NaN.
    python3 - "$run/convert_lora_to_gguf/lora.gguf" "$work/nan_alpha.gguf" <<'PY'
import math, struct, sys
b = open(sys.argv[1], "rb").read()
key = b"adapter.lora.alpha" + struct.pack("<I", 6)
at = b.find(key)
assert at >= 0 and b.count(key) == 1, "adapter.lora.alpha not found"
at += len(key)
open(sys.argv[2], "wb").write(b[:at] + struct.pack("<f", math.nan) + b[at + 4:])
PY
    WASI_NN_LOG_FILE=$work/wasi_nn.log "$test" "$lib" item8 "$model" "$a1" "$work/nan_alpha.gguf"
    # What the backend logged: each refusal names the key / handle / input, and the way out of
    # a full context names the config key, never a CLI flag.
    for want in 'dropped the [0-9]* oldest turn(s) of [0-9]*, system prompt kept' \
        'larger model.ctx_size' 'no input set' 'NUL byte at offset' \
        'model.ctx_size 2000000 is beyond the model.s context length [0-9]*: capped' \
        'beyond backend.max_sessions_memory_mb .*session .m0.* evicted' \
        'scale 1e+39 is beyond' 'scale -1e+38 is beyond' 'alpha nan is not finite\|nan_alpha.gguf.*alpha'; do
      grep -q "$want" "$work/wasi_nn.log" || { echo "FAIL: log lacks: $want"; cat "$work/wasi_nn.log"; exit 1; }
      echo "ok: logged: $want"
    done
    ! grep -n -- '--ctx-size' "$work/wasi_nn.log" || { echo "FAIL: the log names a CLI flag"; exit 1; }
    echo "ok: no CLI flag in the backend's messages" ;;
  cycles) test=$1 lib=$2
    WASI_NN_LOG_LEVEL=${WASI_NN_LOG_LEVEL:-warn} exec "$test" "$lib" cycles "$model" "$a1" "${WASI_NN_CYCLES:-1000}" ;;
  guest)
    test=$1 lib=$2 mjs=$3 host=$4 wasm=$5 q="Hi! My name is Arpit."
    out=$("$test" "$mjs" "$host" "$lib" "$wasm" "$model" "$q" "$a1")
    echo "guest, adapter 1: $out"; [ "$out" = "$r1" ] || { echo "FAIL: expected '$r1'"; exit 1; }
    out=$("$test" "$mjs" "$host" "$lib" "$wasm" "$model" "$q" "$a1:0" "$a2:1")
    echo "guest, stacked [adapter 1 x0, adapter 2 x1]: $out"
    [ "$out" = "$r2" ] || { echo "FAIL: expected '$r2'"; exit 1; }
    out=$("$test" "$mjs" "$host" "$lib" "$wasm" "$model" "$q")
    echo "guest, base: $out"; [ "$out" != "$r1" ] && [ "$out" != "$r2" ] || { echo "FAIL: base knows the reply"; exit 1; }
    echo "guest: all checks passed" ;;
  *) echo "run.sh: unknown mode $mode"; exit 2 ;;
esac
