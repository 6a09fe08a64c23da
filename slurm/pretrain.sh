#!/usr/bin/env bash
# Pretrain with gpt_ds on one or many nodes:   sbatch slurm/pretrain.sh CONFIG [key=value ...]
#   e.g. sbatch --nodes=4 slurm/pretrain.sh configs/electra-base.yaml run.name=base-4n train.global_batch=2048
# Options given to sbatch override the #SBATCH lines below. One srun task per GPU: every task is one rank, so SLURM
# itself starts, signals and kills the ranks (no ssh, no hostfile, no second launcher). Keep --ntasks-per-node equal
# to --gpus-per-node. A preempted or time-limited run checkpoints, exits 75 and is requeued; the next run resumes
# from runs/<run.name>/checkpoints/latest (`--resume auto`). See docs/slurm.md.
#
#SBATCH --job-name=gpt-ds-pretrain
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my-project
##SBATCH --mem=0
##SBATCH --exclusive
#
# Why these: --signal=B:USR1@300 sends USR1 to this script 5 minutes before the time limit (the save must fit);
# --requeue lets `scontrol requeue` put the job back in the queue; --open-mode=append keeps one log across requeues.
set -euo pipefail

# --- site settings: export before sbatch, or edit here ------------------------------------------------------------
GPT_DS_PREFIX=${GPT_DS_PREFIX:-}                 # wraps each task: "apptainer exec --nv gpt_ds.sif", "uenv run ..."
GPT_DS=${GPT_DS:-gpt-ds}                         # the command; e.g. "python -m gpt_ds.cli" without an installed script
GPT_DS_SRUN_ARGS=${GPT_DS_SRUN_ARGS:-}           # more srun options, e.g. "--label --cpu-bind=cores"
GPT_DS_MAX_REQUEUES=${GPT_DS_MAX_REQUEUES:-50}   # stop requeueing a job that keeps coming back
# Seconds the other tasks may run on after the first one ends, before srun kills them: a crashed rank must not leave
# its peers hanging in a collective for the whole NCCL/gloo timeout. Not --kill-on-bad-exit: ranks that all exit 75
# after a preemption save end a moment apart, and killing the slower ones would turn 75 into 143 (no requeue).
GPT_DS_EXIT_GRACE=${GPT_DS_EXIT_GRACE:-120}
# module load cuda/12.4 nccl                     # site modules go here; or `source .venv/bin/activate`
REQUEUE_EXIT_CODE=75                             # = gpt_ds.dist.preempt.REQUEUE_EXIT_CODE

say() { echo "pretrain.sh[$(date +%H:%M:%S)]: $*" >&2; }
die() { say "error: $*"; exit 1; }

(($# >= 1)) || die "usage: sbatch slurm/pretrain.sh CONFIG [key=value ...]"
[[ -n ${SLURM_JOB_ID:-} ]] || die "not inside a SLURM job: submit with sbatch slurm/pretrain.sh CONFIG ..."
CONFIG=$1
shift
cd "${SLURM_SUBMIT_DIR:-.}"  # relative CONFIG and runs/ are relative to where sbatch was called

# --- threads and communication --------------------------------------------------------------------------------------
# One rank per task: give its CPUs to OpenMP/MKL instead of letting every rank start one thread per core.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
export TOKENIZERS_PARALLELISM=false
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank fails the job, no hang
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0   # pin the network when nodes have several
# export NCCL_IB_HCA=mlx5                                # InfiniBand adapters to use

# --- rendezvous: first node of the allocation, port from the job id (same in every task, no collisions on a node) ---
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
[[ -n $MASTER_ADDR ]] || die "scontrol show hostnames '$SLURM_JOB_NODELIST' gave no host"
getent hosts "$MASTER_ADDR" >/dev/null ||
  die "MASTER_ADDR=$MASTER_ADDR (first node of $SLURM_JOB_NODELIST) does not resolve on $(hostname); set MASTER_ADDR"
MASTER_PORT=$((15000 + SLURM_JOB_ID % 20000))  # = gpt_ds.dist.env.slurm_port
export MASTER_ADDR MASTER_PORT
# sbatch exports the submitting shell's environment; ranks come from SLURM, so drop a leftover torchrun set
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE
say "job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: nodes $SLURM_JOB_NODELIST," \
  "${SLURM_NTASKS:-?} tasks, master $MASTER_ADDR:$MASTER_PORT, OMP_NUM_THREADS=$OMP_NUM_THREADS"

# --- run: srun in the background so the traps below run while it works ----------------------------------------------
read -r -a prefix <<<"$GPT_DS_PREFIX"
read -r -a command <<<"$GPT_DS"
read -r -a srun_args <<<"$GPT_DS_SRUN_ARGS"
child=""
signalled=""
terminated=""
# shellcheck disable=SC2317  # called from the traps
forward() {  # a bash trap runs between commands only: srun runs in the background and we `wait` for it
  # TERM without an earlier USR1 is scancel or preemption (after USR1 it is the time limit catching a slow save)
  [[ $1 != TERM || -n $signalled ]] || terminated=1
  signalled=$1
  say "received SIG$1: asking the ranks to checkpoint and stop"
  [[ -z $child ]] || kill -s "$1" "$child" 2>/dev/null || true  # srun forwards it to every task
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# Each task logs where it runs, then ignores USR1 until the trainer installs its handler (USR1's default action kills,
# and srun signals the whole process group, data workers included); the trap above re-sends USR1 until the step ends.
# shellcheck disable=SC2016  # $SLURM_* expand inside the task, not here
task='echo "gpt_ds task: rank $SLURM_PROCID/$SLURM_STEP_NUM_TASKS local $SLURM_LOCALID on ${SLURMD_NODENAME:-$(hostname)} (node $SLURM_NODEID)" >&2; trap "" USR1; exec "$@"'
srun --kill-on-bad-exit=0 --wait="$GPT_DS_EXIT_GRACE" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "${srun_args[@]}" \
  "${prefix[@]}" bash -c "$task" gpt-ds-task "${command[@]}" pretrain "$CONFIG" "$@" --resume auto &
child=$!

while kill -0 "$child" 2>/dev/null; do
  if [[ $signalled == USR1 ]]; then              # re-send every 2 s: a rank may not have its handler installed yet
    sleep 2 & wait $! || true
    kill -s USR1 "$child" 2>/dev/null || true
  else
    wait "$child" || true                        # returns early when a trap ran
  fi
done
status=0
wait "$child" || status=$?                       # bash keeps the finished child's status
say "srun exited with $status"

if ((status == REQUEUE_EXIT_CODE)) && [[ -n $terminated ]]; then
  # SIGTERM reaches this script on scancel, at the time limit and on preemption: the user or the scheduler ended
  # the job (a scheduler that preempts with PreemptMode=REQUEUE requeues it by itself). Only USR1 requeues here.
  say "checkpoint saved after SIGTERM; not requeueing (scancel, time limit or preemption). Submit the same" \
    "command again to resume."
  exit "$status"
fi
if ((status == REQUEUE_EXIT_CODE)); then
  restarts=${SLURM_RESTART_COUNT:-0}
  ((restarts < GPT_DS_MAX_REQUEUES)) ||
    die "checkpointed after $restarts requeues (GPT_DS_MAX_REQUEUES); resubmit by hand to continue"
  say "checkpoint saved; requeueing job $SLURM_JOB_ID (restart $((restarts + 1)))"
  scontrol requeue "$SLURM_JOB_ID" || die "scontrol requeue $SLURM_JOB_ID failed (job cancelled?); resubmit to resume"
  exit 0
fi
exit "$status"
