#!/usr/bin/env bash
# Paper 001 on IDRiD, all stages in one command: stage 1a (G), stage 1b (grading CNN), stage 2 (joint),
# each stage's best checkpoint handed to the next.
#
#   bash conf/collaborative/run_idrid.sh /data/IDRiD [args for every stage, e.g. --trainer.devices=4]
#
# Per-stage extra arguments: STAGE1_SEG_ARGS, STAGE1_GRADING_ARGS, STAGE2_ARGS (space-separated);
# RUNS sets the output folder (default runs/collaborative/idrid), RETINALAB the command.
set -euo pipefail
root=${1:?usage: bash conf/collaborative/run_idrid.sh IDRIDROOT [retinalab fit args...]}
shift
conf=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-runs/collaborative/idrid}
retinalab=${RETINALAB:-retinalab}

stage() {  # name config extra-args-string [args...]; prints the stage's checkpoint (training output goes to stderr)
    local name=$1 config=$2 extra=$3
    shift 3
    # shellcheck disable=SC2086
    $retinalab fit --config "$conf/$config" --data.root "$root" \
        --trainer.default_root_dir "$runs/$name" --trainer.logger.init_args.save_dir "$runs/$name" $extra "$@" >&2
    ckpt=$(ls -t "$runs/$name"/logs/version_*/checkpoints/best*.ckpt 2>/dev/null | head -1 || true)
    [ -n "$ckpt" ] || ckpt=$(ls -t "$runs/$name"/logs/version_*/checkpoints/last.ckpt | head -1)
    echo "$ckpt"
}

seg=$(stage stage1_seg idrid_stage1_seg.yaml "${STAGE1_SEG_ARGS:-}" "$@")
grading=$(stage stage1_grading idrid_stage1_grading.yaml "${STAGE1_GRADING_ARGS:-}" "$@")
echo "stage 1 checkpoints: $seg $grading" >&2
final=$(stage stage2 idrid_stage2.yaml "${STAGE2_ARGS:-}" --data.image_level_root "$root" \
    --model.generator_ckpt "$seg" --model.grader_ckpt "$grading" "$@")
echo "stage 2 checkpoint: $final" >&2
echo "$final"
