#!/usr/bin/env bash
# The SD-1.5-scale benchmark set for a GPU machine (random weights, nothing downloaded); every
# result is printed and appended to benchmarks/results.jsonl. Run from the repository root:
#   bash benchmarks/sd15.sh              # PYTHON=python3 to use another interpreter than .venv's
#   bash benchmarks/sd15.sh ca generate  # only the named rows (names below), in this file's order
# Cheap and most-asked rows first, the paper-size SalUn run last, so a run cut short by a lease
# still records the most; a failing row is reported and the rest still run (exit 1 at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
ROWS=(uce uce-lora uce-concepts salun-256 salun-lora esd-base advunlearn ca fmn scissorhands erasediff seot attack generate optimizer esd-paper salun-800 sd2-uce sd2-salun-256)
source benchmarks/rows.sh
fast_salun="--size sd15 --mixed-precision bf16 --gradient-checkpointing --synthesis-scheduler dpm --synthesis-steps 20 --synthesis-batch-size 32"
row uce        benchmarks.bench_erase --size sd15 --method uce                 # target: <= 5 s
row uce-lora   benchmarks.bench_erase --size sd15 --method uce --output-format lora   # the adapter instead of the 3.4 GB pipeline
row uce-concepts benchmarks.bench_uce_concepts --size sd15 --concepts 1 10 100 --lora   # target: 100 concepts' edit <= 30 s (CPU); adapter written <= 2 s
row salun-256  benchmarks.bench_erase $fast_salun --num-images 256            # target: <= 60 s end to end, <= 16 GiB
row salun-lora benchmarks.bench_erase $fast_salun --num-images 64 --adapter lora   # memory and step against salun-256's full fine-tune
row esd-base   benchmarks.bench_erase --size sd15 --method esd --mixed-precision bf16 --steps 50 --sample-from base --num-images 64
row advunlearn benchmarks.bench_erase --size sd15 --method advunlearn --mixed-precision bf16 --steps 10 --warmup-steps 2 --num-images 16   # 8 steps with the 30-step attack
row ca         benchmarks.bench_erase --size sd15 --method ca --mixed-precision bf16 --synthesis-scheduler dpm --synthesis-steps 20 --synthesis-batch-size 32 --num-images 64   # 100 steps, batch 8
row fmn        benchmarks.bench_erase --size sd15 --method fmn --mixed-precision bf16 --synthesis-scheduler dpm --synthesis-steps 20 --num-images 10   # official: 35 steps at batch 1
row scissorhands benchmarks.bench_erase $fast_salun --method scissorhands --num-images 256   # official 250 steps at batch 16
row erasediff  benchmarks.bench_erase $fast_salun --method erasediff --num-images 256   # nudity: official 160 steps at batch 16, noxattn
row attack     benchmarks.bench_attack --size sd15 --prompts 2 --steps 200 --check-every 100   # nudity protocol, worst case per prompt
row seot       benchmarks.bench_seot --size sd15 --images 8 --steps 50   # SEOT at inference: SWR, SWR+ITO vs stock
row generate   benchmarks.bench_generate --size sd15 --prompts 32 --steps 25 --repeats 2   # target: harness >= 0.95 of bare
row optimizer  benchmarks.bench_optimizer --size sd15
row esd-paper  benchmarks.bench_erase --size sd15 --method esd --mixed-precision bf16 --steps 20   # paper sampling (current model)
row salun-800  benchmarks.bench_erase $fast_salun --num-images 800            # the paper's data size
# SD 2.1's shapes (768 px, v-prediction, 1024-wide text encoder): run by name, `bash benchmarks/sd15.sh sd2-uce sd2-salun-256`
row sd2-uce    benchmarks.bench_erase --size sd2 --method uce
row sd2-salun-256 benchmarks.bench_erase ${fast_salun/sd15/sd2} --num-images 256   # 96x96 latents: 2.25x SD 1.5's
finish
