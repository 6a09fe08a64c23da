#!/usr/bin/env bash
# Fine-tune an exported encoder:   sbatch slurm/finetune.sh MODEL_DIR --train F [--validation F] [--test F] ...
#   e.g. sbatch --nodes=1 --gpus-per-node=4 slurm/finetune.sh export/discriminator --train sst2/train.jsonl \
#          --validation sst2/dev.jsonl --label-field label --seeds 5
# Every option after MODEL_DIR goes to `gpt-ds finetune` (gpt-ds finetune --help). One srun task per node runs
# `accelerate launch`, which starts one process per GPU of the node; accelerate forms the process group and splits each
# (global) batch over all processes, so the result does not depend on the number of GPUs. No requeue: a fine-tuning
# run is short; a preempted one is simply submitted again.
#
#SBATCH --job-name=gpt-ds-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my-project
set -euo pipefail

# --- site settings: export before sbatch, or edit here ------------------------------------------------------------
GPT_DS_PREFIX=${GPT_DS_PREFIX:-}            # wraps each task: "apptainer exec --nv gpt_ds.sif", ...
GPT_DS_ACCELERATE=${GPT_DS_ACCELERATE:-accelerate launch}  # e.g. "python -m accelerate.commands.launch"
GPT_DS_MIXED_PRECISION=${GPT_DS_MIXED_PRECISION:-bf16}  # accelerate's --mixed_precision (no on CPUs)
# module load cuda/12.4                     # site modules go here; or `source .venv/bin/activate`

say() { echo "finetune.sh[$(date +%H:%M:%S)]: $*" >&2; }
die() { say "error: $*"; exit 1; }

(($# >= 2)) || die "usage: sbatch slurm/finetune.sh MODEL_DIR --train F [gpt-ds finetune options]"
[[ -n ${SLURM_JOB_ID:-} ]] || die "not inside a SLURM job: sbatch slurm/finetune.sh MODEL_DIR --train F ..."
cd "${SLURM_SUBMIT_DIR:-.}"  # relative paths are relative to where sbatch was called
[[ -d $1 ]] || die "MODEL_DIR '$1' is not a folder (seen from $(pwd)); give an exported model folder"

NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}           # "h100:4" -> 4
NPROC=$((NNODES * GPUS_PER_NODE))
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
[[ -n $MASTER_ADDR ]] || die "scontrol show hostnames '$SLURM_JOB_NODELIST' gave no host"
MASTER_PORT=$((35000 + SLURM_JOB_ID % 20000))  # apart from pretrain.sh's range: both may share a node
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(((${SLURM_CPUS_PER_TASK:-1} + GPUS_PER_NODE - 1) / GPUS_PER_NODE))}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE  # accelerate launch sets them per process

multi=()
((NPROC > 1)) && multi=(--multi_gpu)
say "job $SLURM_JOB_ID: $NNODES node(s) x $GPUS_PER_NODE GPU(s) = $NPROC processes, master $MASTER_ADDR:$MASTER_PORT"
read -r -a prefix <<<"$GPT_DS_PREFIX"
read -r -a launcher <<<"$GPT_DS_ACCELERATE"
# shellcheck disable=SC2016  # $SLURM_NODEID expands inside each task (its node's rank), not here
srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "${prefix[@]}" bash -c \
  'n=$1; shift; exec "${@:1:n}" --machine_rank "$SLURM_NODEID" "${@:n+1}"' finetune-task "${#launcher[@]}" \
  "${launcher[@]}" "${multi[@]}" \
  --num_machines "$NNODES" --num_processes "$NPROC" --main_process_ip "$MASTER_ADDR" \
  --main_process_port "$MASTER_PORT" --mixed_precision "$GPT_DS_MIXED_PRECISION" --dynamo_backend no \
  -m gpt_ds.cli finetune "$@"
