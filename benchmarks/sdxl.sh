#!/usr/bin/env bash
# The SDXL-scale benchmark set for a GPU machine (SDXL-base's shapes, random weights, nothing
# downloaded), sd15.sh's sibling: every result is printed and appended to benchmarks/results.jsonl.
#   bash benchmarks/sdxl.sh              # PYTHON=python3 to use another interpreter than .venv's
#   bash benchmarks/sdxl.sh salun-xattn  # only the named rows (names below), in this file's order
# SalUn over the whole UNet does not fit 24 GB at SDXL size (README, "SDXL"): the 24 GB row trains
# and ranks the cross-attention weights alone; the full row shows what the whole UNet costs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROWS=(uce seot salun-xattn salun-full)
source benchmarks/rows.sh
fast_salun="--size sdxl --mixed-precision bf16 --gradient-checkpointing --synthesis-scheduler dpm --synthesis-steps 20 --synthesis-batch-size 8"
row uce         benchmarks.bench_erase --size sdxl --method uce                 # the closed form on 2048-wide keys/values
row seot        benchmarks.bench_seot --size sdxl --images 4 --steps 50        # SEOT at inference: SWR, SWR+ITO vs stock
row salun-xattn benchmarks.bench_erase $fast_salun --num-images 64 --scope xattn --mask-ranking scope   # target: <= 24 GiB
row salun-full  benchmarks.bench_erase $fast_salun --num-images 64             # the official whole-UNet ranking and scope
finish
