#!/usr/bin/env bash
# One-command GPU smoke check (about 5 minutes on one GPU): a few steps of
# recipes/pretrain_gpu_530m.yaml (bf16, NCCL with one rank), batched vs one-at-a-time proxies at
# the paper's proxy shape, and the loader feeding the GPU. Prints a summary and writes
# WORK/gpu_smoke.json. Options are passed on: --work DIR, --steps N, --dry-run (CPU, toy scale).
#
#   scripts/gpu_smoke.sh                 # on a CUDA machine, from the repository root
#   scripts/gpu_smoke.sh --dry-run       # anywhere: checks the plumbing, not the GPU
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m quadmix_stream.cli bench gpu "$@"
