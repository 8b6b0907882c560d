#!/usr/bin/env bash
# Re-runs the README's measured tables: the five attacks on MNIST and AT&T (3 seeds), the LOMMA
# ablation on AT&T, every defense against GMI (3 attack seeds; on MNIST also against KEDMI and PLG-MI, on AT&T
# Trap-MID too), MID's and BiDO's settings (sweeps_<data>), and the GNIME table.
#
#   scripts/readme_tables.sh [mnist|att|gnime|all]     (default: all; outputs under runs/tables/)
#
# Every stage is a resumable jaxmi command: rerun the script after an interruption and finished
# work is skipped (trainings resume from their checkpoints, attacks from their saved latents).
# CPU budget on a 2-core machine, measured before PLG-MI/Trap-MID and the KEDMI/PLG-MI defense rows joined:
# mnist ~1.5 h, att ~10 h (GMI at 64 px is ~1.5 s per step
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
  train train-gan "gan_plg_${d}" "gan.py:kind=plg,data=$d" target="$OUT/${d}_target"
  done_or "$OUT/surrogate_${d}/summary.json" $J distill --no-progress --config "configs/surrogate.py:data=$d" \
      --workdir "$OUT/surrogate_${d}" teacher="$OUT/${d}_target"
  for seed in 0 1 2; do
    attack "method=gmi,data=$d" "gmi_${d}_s$seed" "${models[@]}" gan="$OUT/gan_${d}" inversion.seed=$seed "$@"
    attack "method=gmi_lomma,data=$d" "gmi_lomma_${d}_s$seed" "${models[@]}" gan="$OUT/gan_${d}" \
        surrogates="$OUT/surrogate_${d}" inversion.seed=$seed "$@"
    attack "method=kedmi,data=$d" "kedmi_${d}_s$seed" "${models[@]}" gan="$OUT/gan_kedmi_${d}" inversion.seed=$seed "$@"
    attack "method=kedmi_lomma,data=$d" "kedmi_lomma_${d}_s$seed" "${models[@]}" gan="$OUT/gan_kedmi_${d}" \
        surrogates="$OUT/surrogate_${d}" inversion.seed=$seed "$@"
    attack "method=plg,data=$d" "plg_${d}_s$seed" "${models[@]}" gan="$OUT/gan_plg_${d}" inversion.seed=$seed "$@"
  done
  $J report "$OUT"/{gmi,gmi_lomma,kedmi,kedmi_lomma,plg}_"${d}"_s? --out "$OUT/attacks_${d}" --title "attacks on $d"

  # Every defense against GMI; on MNIST (cheap) also against KEDMI and PLG-MI, on AT&T those two only against
  # Trap-MID (their undefended rows are the attack table's). GMI's prior knows nothing of the target, so one
  # serves all; KEDMI's and PLG-MI's GANs learn from the target's labels of public images, so the attacker
  # trains them against the model it attacks: the defended one.
  local dirs=("$OUT"/{gmi,kedmi,plg}_"${d}"_s?)
  for defense in bido bido_coco mid nls calor tl_dmi dp_sgd trap_mid; do
    $J defend --no-progress --config "configs/defense.py:method=$defense,data=$d" \
        --workdir "$OUT/defense_${defense}_${d}" \
      || [[ -e "$OUT/defense_${defense}_${d}/summary.json" ]]
    local methods=(gmi)
    [[ $d == mnist || $defense == trap_mid ]] && methods=(gmi kedmi plg)
    for method in "${methods[@]}"; do
      local gan="$OUT/gan_${d}"
      if [[ $method != gmi ]]; then
        gan="$OUT/gan_${method}_${d}_${defense}"
        train train-gan "gan_${method}_${d}_${defense}" "gan.py:kind=$method,data=$d" \
            target="$OUT/defense_${defense}_${d}"
      fi
      for seed in 0 1 2; do
        attack "method=$method,data=$d" "${method}_${d}_${defense}_s$seed" target="$OUT/defense_${defense}_${d}" \
            evaluator="$OUT/${d}_eval" gan="$gan" inversion.seed=$seed "$@"
        dirs+=("$OUT/${method}_${d}_${defense}_s$seed")
      done
    done
  done
  $J report "${dirs[@]}" --out "$OUT/defenses_${d}" --title "defenses vs GMI, KEDMI and PLG-MI on $d"
}

sweep() {  # sweep DATA DEFENSE SETTING_NAME field=value [STEPS_OVERRIDE...]: one more setting of a defense vs GMI
  local d=$1 defense=$2 tag=$3 field=$4; shift 4
  local target="$OUT/defense_${defense}_${tag}_${d}"
  $J defend --no-progress --config "configs/defense.py:method=$defense,data=$d" --workdir "$target" "$field" \
    || [[ -e "$target/summary.json" ]]
  for seed in 0 1 2; do
    attack "method=gmi,data=$d" "gmi_${d}_${defense}_${tag}_s$seed" target="$target" evaluator="$OUT/${d}_eval" \
        gan="$OUT/gan_${d}" inversion.seed=$seed "$@"
  done
}

sweeps() {  # the papers' trade-off: MID's beta and BiDO's lambda_y beyond the default settings
  local d=$1; shift
  if [[ $d == mnist ]]; then
    sweep mnist mid beta0.1 defense.beta=0.1
    sweep mnist mid beta1 defense.beta=1.0
  else
    sweep att mid beta0.02 defense.beta=0.02 "$@"
  fi
  sweep "$d" bido ly2.5 defense.lambda_y=2.5 "$@"
  $J report "$OUT"/gmi_"${d}"_s? "$OUT"/gmi_"${d}"_{mid,bido}_s? "$OUT"/gmi_"${d}"_mid_beta*_s? "$OUT"/gmi_"${d}"_bido_ly*_s? \
      --out "$OUT/sweeps_${d}" --title "MID and BiDO settings vs GMI on $d"
}

ablation() {  # LOMMA's parts one at a time, KEDMI on AT&T (the README's ablation table)
  local models=(target="$OUT/att_target" evaluator="$OUT/att_eval" gan="$OUT/gan_kedmi_att")
  local steps=(inversion.steps=300 inversion.restarts=2)
  local logit=(inversion.identity_loss=logit)
  local reg=(inversion.feature_reg_weight=100.0 inversion.p_reg=global)
  for seed in 0 1 2; do
    local s=(inversion.seed=$seed)
    attack "method=kedmi,data=att" "ablation_clamp_s$seed" "${models[@]}" "${steps[@]}" "${s[@]}" inversion.draw_clamp=1.0
    attack "method=kedmi,data=att" "ablation_surrogate_s$seed" "${models[@]}" "${steps[@]}" "${s[@]}" \
        inversion.draw_clamp=1.0 surrogates="$OUT/surrogate_att"
    attack "method=kedmi,data=att" "ablation_logit_s$seed" "${models[@]}" "${steps[@]}" "${s[@]}" \
        inversion.draw_clamp=1.0 surrogates="$OUT/surrogate_att" "${logit[@]}"
    attack "method=kedmi,data=att" "ablation_logit_reg_s$seed" "${models[@]}" "${steps[@]}" "${s[@]}" \
        inversion.draw_clamp=1.0 "${logit[@]}" "${reg[@]}"
  done
  $J report "$OUT"/kedmi_att_s? "$OUT"/ablation_{clamp,surrogate,logit,logit_reg}_s? "$OUT"/kedmi_lomma_att_s? \
      --out "$OUT/ablation_att" --title "LOMMA's parts, KEDMI on att"
}

[[ $what == mnist || $what == all ]] && pipeline mnist && sweeps mnist
# AT&T: 300 steps and 2 restarts per identity instead of the protocol's 1500-2400 x 5 (CPU budget).
[[ $what == att || $what == all ]] && pipeline att inversion.steps=300 inversion.restarts=2 \
  && ablation && sweeps att inversion.steps=300 inversion.restarts=2
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
