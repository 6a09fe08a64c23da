#!/usr/bin/env bash
# Export a run as Hugging Face checkpoints:   sbatch slurm/export.sh RUN_DIR OUT_DIR [--step N] [--verify]
# Runs `gpt-ds export RUN_DIR --out OUT_DIR ...` on one CPU task: it merges the ZeRO-3 partitions offline, so it
# needs no GPU and no process group, only memory for the merged fp32 weights of both towers (set --mem to fit).
#
#SBATCH --job-name=gpt-ds-export
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=cpu
##SBATCH --account=my-project
##SBATCH --mem=64G
set -euo pipefail

GPT_DS_PREFIX=${GPT_DS_PREFIX:-}   # wraps the task: "apptainer exec gpt_ds.sif", ...
GPT_DS=${GPT_DS:-gpt-ds}           # the command; e.g. "python -m gpt_ds.cli"
# module load python                # site modules go here; or `source .venv/bin/activate`

say() { echo "export.sh[$(date +%H:%M:%S)]: $*" >&2; }
die() { say "error: $*"; exit 1; }
(($# >= 2)) || die "usage: sbatch slurm/export.sh RUN_DIR OUT_DIR [--step N] [--verify]"
[[ -n ${SLURM_JOB_ID:-} ]] || die "not inside a SLURM job: sbatch slurm/export.sh RUN_DIR OUT_DIR"
cd "${SLURM_SUBMIT_DIR:-.}"  # relative paths are relative to where sbatch was called
RUN_DIR=$1
OUT_DIR=$2
shift 2
[[ -d $RUN_DIR ]] || die "RUN_DIR '$RUN_DIR' is not a folder (seen from $(pwd))"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
read -r -a prefix <<<"$GPT_DS_PREFIX"
read -r -a command <<<"$GPT_DS"
say "job $SLURM_JOB_ID: ${command[*]} export $RUN_DIR --out $OUT_DIR $*"
srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "${prefix[@]}" "${command[@]}" \
  export "$RUN_DIR" --out "$OUT_DIR" "$@"
