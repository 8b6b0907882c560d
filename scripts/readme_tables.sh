#!/usr/bin/env bash
# Re-runs the README's measured tables: the four attacks on MNIST and AT&T (3 seeds), the LOMMA
# ablation on AT&T, every defense against GMI (3 attack seeds), and the GNIME table.
#
#   scripts/readme_tables.sh [mnist|att|gnime|all]     (default: all; outputs under runs/tables/)
#
# Every stage is a resumable jaxmi command: rerun the script after an interruption and finished
# work is skipped (trainings resume from their checkpoints, attacks from their saved latents).
# CPU budget on a 2-core machine: mnist ~1.5 h, att ~10 h (GMI at 64 px is ~1.5 s per step
# for 40 latents), gnime ~1 h.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/tables
J="bin/jaxmi"
what=${1:-all}

done_or() {  # done_or FILE CMD...: runs CMD unless FILE exists
  local file=$1; shift
  if [[ -e $file ]]; then echo "skip (done): $file"; else "$@"; fi
}

train() {  # train COMMAND WORKDIR RECIPE:ARGS field=value...
  done_or "$OUT/$2/summary.json" $J "$1" --no-progress --config "configs/$3" --workdir "$OUT/$2" "${@:4}"
}

attack() {  # attack METHOD=..,DATA=.. WORKDIR field=value...
  done_or "$OUT/$2/results.json" $J attack --no-progress --config "configs/attack.py:$1" --workdir "$OUT/$2" "${@:3}"
}

pipeline() {  # pipeline DATA STEPS_OVERRIDE...
  local d=$1; shift
  local models=(target="$OUT/${d}_target" evaluator="$OUT/${d}_eval")
  train train-classifier "${d}_target" "classifier.py:role=target,data=$d"
  train train-classifier "${d}_eval" "classifier.py:role=eval,data=$d"
  train train-gan "gan_${d}" "gan.py:kind=gmi,data=$d"
  train train-gan "gan_kedmi_${d}" "gan.py:kind=kedmi,data=$d" target="$OUT/${d}_target"
  done_or "$OUT/surrogate_${d}/summary.json" $J distill --no-progress --config "configs/surrogate.py:data=$d" \
      --workdir "$OUT/surrogate_${d}" teacher="$OUT/${d}_target"
  for seed in 0 1 2; do
    attack "method=gmi,data=$d" "gmi_${d}_s$seed" "${models[@]}" gan="$OUT/gan_${d}" inversion.seed=$seed "$@"
    attack "method=gmi_lomma,data=$d" "gmi_lomma_${d}_s$seed" "${models[@]}" gan="$OUT/gan_${d}" \
        surrogates="$OUT/surrogate_${d}" inversion.seed=$seed "$@"
    attack "method=kedmi,data=$d" "kedmi_${d}_s$seed" "${models[@]}" gan="$OUT/gan_kedmi_${d}" inversion.seed=$seed "$@"
    attack "method=kedmi_lomma,data=$d" "kedmi_lomma_${d}_s$seed" "${models[@]}" gan="$OUT/gan_kedmi_${d}" \
        surrogates="$OUT/surrogate_${d}" inversion.seed=$seed "$@"
  done
  $J report "$OUT"/{gmi,gmi_lomma,kedmi,kedmi_lomma}_"${d}"_s? --out "$OUT/attacks_${d}" --title "attacks on $d"

  local dirs=("$OUT"/gmi_"${d}"_s?)
  for defense in bido bido_coco mid nls calor tl_dmi dp_sgd; do
    $J defend --no-progress --config "configs/defense.py:method=$defense,data=$d" \
        --workdir "$OUT/defense_${defense}_${d}" \
      || [[ -e "$OUT/defense_${defense}_${d}/summary.json" ]]
    for seed in 0 1 2; do
      attack "method=gmi,data=$d" "gmi_${d}_${defense}_s$seed" target="$OUT/defense_${defense}_${d}" \
          evaluator="$OUT/${d}_eval" gan="$OUT/gan_${d}" inversion.seed=$seed "$@"
      dirs+=("$OUT/gmi_${d}_${defense}_s$seed")
    done
  done
  $J report "${dirs[@]}" --out "$OUT/defenses_${d}" --title "defenses vs GMI on $d"
}

[[ $what == mnist || $what == all ]] && pipeline mnist
# AT&T: 300 steps and 2 restarts per identity instead of the protocol's 1500-2400 x 5 (CPU budget).
[[ $what == att || $what == all ]] && pipeline att inversion.steps=300 inversion.restarts=2
if [[ $what == gnime || $what == all ]]; then
  for d in mnist att; do
    train train-classifier "gnime_target_$d" "classifier.py:role=gnime_target,data=$d"
    train train-classifier "gnime_eval_$d" "classifier.py:role=gnime_eval,data=$d"
    for m in grad gradcam; do
      done_or "$OUT/gnime_${m}_$d/results.json" $J gnime --no-progress \
          --config "configs/gnime.py:explanation=$m,data=$d" --workdir "$OUT/gnime_${m}_$d" \
          target="$OUT/gnime_target_$d" evaluator="$OUT/gnime_eval_$d"
    done
  done
fi
