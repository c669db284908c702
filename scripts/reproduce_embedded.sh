#!/usr/bin/env bash
# Every number in README.md / MODEL.md about the embedded model comes from these commands (run from the repo
# root on a 2-core CPU; the shared benchmark folder is ../shared/benchmarks). Each step resumes if re-run.
set -euo pipefail
TOX=${TOXICBENCH:-../shared/benchmarks/toxicbench/words/train}
mkdir -p runs

# 1. Quality of the shipped model (issue 3 bar).
textloc eval-embedded --n 200 --seed 12345 --out runs/eval

# 2. Localization with default settings (the README's main job), then ship its summary as the "preset".
textloc localize --out runs/localize
cp runs/localize/summary.json src/textloc/embedded/localized.json

# 3. Attribute localization (style = font, colour = text colour, background).
for a in style colour background; do textloc localize --attribute "$a" --n-pairs 16 --out "runs/localize-$a"; done

# 4. Editing (layers: the full-score set 4+0+1): tune the start step on validation pairs, then the benchmark on
#    fresh test pairs, fully specified prompts and prompts that name only the text; layer 4 alone for comparison.
textloc edit-tune --model embedded --layers preset --n-pairs 32 --seed 1 --candidates 0,1,2,3,4,6 --out runs/edit-tune
textloc bench edit --model embedded --benchmark embedded --n 100 --seed 7 --out runs/bench-edit
textloc bench edit --model embedded --benchmark embedded --n 100 --seed 7 --layers 4 --start-step 0 \
  --out runs/bench-edit-layer4
textloc bench edit --model embedded --benchmark embedded-open --n 100 --seed 7 --out runs/bench-edit-open

# 5. Safety on ToxicBench's training words that the model can render.
textloc bench safety --model embedded --words "$TOX/toxic_words.txt" --mappings "$TOX/toxic_mappings.txt" \
  --n 100 --out runs/bench-safety

# 6. Localized LoRA (the full-score set 4+0+1) vs all cross-attention vs random layers, on the weakest slice
#    (6 letters of M and W); two seeds.
textloc bench finetune --model embedded --scenario "letters=MW,len=6" --layers-localized 4,0,1 --steps 600 \
  --lr 1e-4 --n-test 200 --random-seeds 0 --seed 1 --out runs/bench-finetune
textloc bench finetune --model embedded --scenario "letters=MW,len=6" --layers-localized 4,0,1 --steps 600 \
  --lr 1e-4 --n-test 100 --random-seeds 0 --seed 0 --out runs/bench-finetune-seed0

# 7. Speed ratios.
OMP_NUM_THREADS=1 python benchmarks/bench_engine.py --model embedded --repeats 3 --pairs 4
for m in tiny:sd3 tiny:flux tiny:sd15; do OMP_NUM_THREADS=1 python benchmarks/bench_engine.py --model $m --repeats 7; done
OMP_NUM_THREADS=1 python benchmarks/bench_lora.py --repeats 5
