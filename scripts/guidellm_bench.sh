#!/usr/bin/env bash
# Interoperability check: GuideLLM (vLLM project's benchmark client) against opscale's router.
#
# Creates its own venv (.bench-venvs/guidellm; CPU torch first, so pip does not fetch CUDA wheels),
# installs guidellm 0.8.x, builds a tiny offline tokenizer (a byte-level BPE trained with the
# `tokenizers` package on a few sentences, saved as tokenizer.json + tokenizer_config.json), starts
# `opscale up` (or uses --url of a running router), and runs a short constant-rate benchmark with
# synthetic prompts. Everything runs offline once the venv exists.
#
#   scripts/guidellm_bench.sh [--url http://127.0.0.1:8000] [--rate 2] [--duration 20]
#                             [--prompt-tokens 64] [--output-tokens 32] [--out DIR]
#
# Needs NATS and Redis at the configured URLs when it starts `opscale up` itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GUIDELLM_VENV:-$ROOT/.bench-venvs/guidellm}"
OPSCALE="${OPSCALE:-$ROOT/.venv/bin/opscale}"
URL=""
RATE=2
DURATION=20
PROMPT_TOKENS=64
OUTPUT_TOKENS=32
OUT="$ROOT/out/guidellm"
PORT_BASE=18700

while [[ $# -gt 0 ]]; do
  case "$1" in
    --url) URL="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --prompt-tokens) PROMPT_TOKENS="$2"; shift 2 ;;
    --output-tokens) OUTPUT_TOKENS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --port-base) PORT_BASE="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "guidellm_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [[ ! -x "$VENV/bin/guidellm" ]]; then
  echo "== creating $VENV (CPU torch, then guidellm 0.8.x)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q "guidellm>=0.8,<0.9" tokenizers
fi
"$VENV/bin/guidellm" --version

mkdir -p "$OUT"
TOKENIZER="$OUT/tokenizer"
if [[ ! -f "$TOKENIZER/tokenizer.json" ]]; then
  echo "== building a tiny offline tokenizer in $TOKENIZER"
  "$VENV/bin/python" - "$TOKENIZER" <<'PY'
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
sentences = [
    "the router sends each request to the instance with the fewest outstanding tokens",
    "a planner scales pools of model instances up and down as the load changes",
    "tokens stream back to the client one by one as the engine produces them",
    "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun",
    "prefill reads the prompt and decode writes the answer one token at a time",
]
# Byte-level BPE: every text encodes (no unknown words), so GuideLLM can cut its synthetic prompts
# from any corpus to an exact token count and decode them back to text.
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(sentences, trainers.BpeTrainer(
    vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
tok.save(str(out / "tokenizer.json"))
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "pad_token": "[PAD]",
    "eos_token": "[EOS]", "model_max_length": 1 << 20}))
print(f"vocabulary of {tok.get_vocab_size()} tokens")
PY
fi

STACK_PID=""
cleanup() {
  if [[ -n "$STACK_PID" ]]; then
    kill -TERM "$STACK_PID" 2>/dev/null || true
    wait "$STACK_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [[ -z "$URL" ]]; then
  URL="http://127.0.0.1:$PORT_BASE"
  echo "== starting opscale up (1 simulated host, ports from $PORT_BASE); log: $OUT/opscale-up.log"
  "$OPSCALE" up --agents 1 --port-base "$PORT_BASE" >"$OUT/opscale-up.log" 2>&1 &
  STACK_PID=$!
fi

echo "== waiting for a served model at $URL/v1/models"
MODEL=""
for _ in $(seq 1 120); do
  MODEL="$(curl -sf "$URL/v1/models" | "$VENV/bin/python" -c \
    'import json,sys; d=json.load(sys.stdin)["data"]; print(d[0]["id"] if d else "")' 2>/dev/null || true)"
  # a model is served once a completion succeeds (instances load after the first plan)
  if [[ -n "$MODEL" ]] && curl -sf "$URL/v1/completions" -H 'Content-Type: application/json' \
      -d "{\"model\":\"$MODEL\",\"prompt\":\"hi\",\"max_tokens\":1}" >/dev/null; then
    break
  fi
  MODEL=""
  sleep 1
done
if [[ -z "$MODEL" ]]; then
  echo "guidellm_bench.sh: no model became servable at $URL within 120 s" >&2
  [[ -f "$OUT/opscale-up.log" ]] && tail -20 "$OUT/opscale-up.log" >&2
  exit 1
fi
echo "== model $MODEL is served; running guidellm for ${DURATION}s at ${RATE} req/s"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$VENV/bin/guidellm" run \
  --backend "kind=openai_http,target=$URL,model=$MODEL,request_format=/v1/completions" \
  --profile "kind=constant,rate=$RATE" \
  --constraint "kind=max_duration,seconds=$DURATION" \
  --tokenizer "kind=huggingface_auto,model=$TOKENIZER" \
  --data "kind=synthetic_text,prompt_tokens=$PROMPT_TOKENS,output_tokens=$OUTPUT_TOKENS" \
  --output "kind=json,path=$OUT/benchmarks.json" \
  --output kind=console \
  --disable-console-interactive
echo "== report: $OUT/benchmarks.json"
