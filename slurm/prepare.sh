#!/usr/bin/env bash
# Build a token store on one CPU node:   sbatch slurm/prepare.sh [gpt-ds prepare arguments ...]
#   e.g. sbatch slurm/prepare.sh --input corpus/ --tokenizer tok/ --out stores/corpus --seq-len 128 512
# The arguments go to `gpt-ds prepare` unchanged (sbatch slurm/prepare.sh --help lists them); --workers defaults to
# the job's CPUs.
# A CPU job: no GPUs, one task with many CPUs for the tokenizer. The store is written aside and renamed, so a job
# killed at its time limit leaves no half-written store behind; run it again.
#
#SBATCH --job-name=gpt-ds-prepare
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=cpu
##SBATCH --account=my-project
##SBATCH --mem=64G
set -euo pipefail

GPT_DS_PREFIX=${GPT_DS_PREFIX:-}   # wraps the task: "apptainer exec gpt_ds.sif", ...
GPT_DS=${GPT_DS:-gpt-ds}           # the command; e.g. "python -m gpt_ds.cli"
# module load python                # site modules go here; or `source .venv/bin/activate`

say() { echo "prepare.sh[$(date +%H:%M:%S)]: $*" >&2; }
[[ -n ${SLURM_JOB_ID:-} ]] || { say "error: not inside a SLURM job: sbatch slurm/prepare.sh ARGS ..."; exit 1; }
cd "${SLURM_SUBMIT_DIR:-.}"  # relative paths are relative to where sbatch was called

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$OMP_NUM_THREADS}  # Hugging Face tokenizers' thread pool
export TOKENIZERS_PARALLELISM=true

read -r -a prefix <<<"$GPT_DS_PREFIX"
read -r -a command <<<"$GPT_DS"
say "job $SLURM_JOB_ID on ${SLURMD_NODENAME:-$(hostname)}, $OMP_NUM_THREADS threads: ${command[*]} prepare $*"
workers=(--workers "${SLURM_CPUS_PER_TASK:-1}")
for arg in "$@"; do [[ $arg != --workers* && $arg != -h && $arg != --help ]] || workers=(); done
srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "${prefix[@]}" "${command[@]}" prepare "$@" "${workers[@]}"
