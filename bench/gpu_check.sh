#!/usr/bin/env bash
# The GPU checks of the fused kernels and the trainer, as one prepared script for a short device lease.
#
#   bash bench/gpu_check.sh wheels      # here (registry access): the packages the GPU image lacks, into .whl/
#   bash bench/gpu_check.sh run [PART]  # on the GPU machine; PART: kernels | smoke | curve | heads | step | all
#
# The GPU image has torch, triton and transformers but not DeepSpeed, pydantic, hjson, Liger-Kernel or
# cut-cross-entropy, and it cannot reach a registry: `wheels` fetches them (Python 3.12, x86-64) for the device tool
# to carry (carry: [".whl", ".gpu"]); `run` installs them into /tmp/site first. The `curve` part also needs a token
# store and its tokenizer under .gpu/ (`cp -r runs/electra_vs_mlm/{store,tokenizer} .gpu/`, built by
# bench/electra_vs_mlm.py). Each part has a time limit, cut to what is left of DEADLINE, so that one hang cannot use
# up the lease; results go to $OUT (or runs/gpu_check): <part>.log, curve-{electra,mlm}.tgz (the exports) and
# summary.txt with each part's exit code, time and last line: 8 files, the most a device call returns.
# See docs/kernels.md ("GPU checks").
set -uo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.." || exit 1

WHEELS=(liger-kernel==0.8.5 cut-cross-entropy==25.1.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 typing-extensions==4.16.0 hjson==3.1.0)
DEEPSPEED=deepspeed==0.19.8  # an sdist on PyPI: built here into a pure-Python wheel

wheels() {
    local py=${PYTHON:-.venv/bin/python}
    mkdir -p .whl
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}" || return 1
    "$py" -m pip wheel -q --no-deps -w .whl "$DEEPSPEED" || return 1
    ls -l .whl
}

part() {  # part NAME SECONDS CMD...: run with a limit (cut to what is left of DEADLINE), keep the log and its last line
    local name=$1 limit=$2
    shift 2
    local left=$(( ${DEADLINE:-100000} - SECONDS ))
    if (( left < 20 )); then
        echo "$name: skipped, $left s left of the ${DEADLINE:-} s deadline" | tee -a "$out/summary.txt"
        return
    fi
    (( limit > left )) && limit=$left
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/summary.txt"
    tail -n 1 "$out/$name.log" >>"$out/summary.txt"
}

smoke() {  # ZeRO-3, bf16, Triton heads on one GPU: 40 steps with a checkpoint, then a resume to 60
    # (extra overrides after the defaults, e.g. to try the script on a CPU: train.precision=fp32 model.kernels=torch)
    local run=${SMOKE_DIR:-/tmp/gpu_smoke} py=${PYTHON:-python3}
    rm -rf "$run"
    local args=(tiny data.synthetic=true model.vocab_size=8000 train.precision=bf16 model.kernels=triton
                deepspeed.generator=ds_configs/zero3_bf16.json deepspeed.discriminator=ds_configs/zero3_bf16.json
                checkpoint.every=20 logging.every=10 logging.tensorboard=false "run.dir=$run" "$@")
    "$py" -m gpt_ds.cli pretrain "${args[@]}" train.max_steps=40 || return 1
    "$py" -m gpt_ds.cli pretrain "${args[@]}" train.max_steps=60 || return 1
    "$py" - "$run/metrics.jsonl" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"gen_loss"' in line]
steps = [r["step"] for r in rows]
first, last = rows[0], rows[-1]
ok = steps == sorted(set(steps)) and steps[-1] == 60 and all(math.isfinite(r["gen_loss"]) for r in rows) \
    and last["loss"] < first["loss"]  # synthetic ids are uniform: the MLM part has nothing to learn, the RTD part has
print(json.dumps({"smoke_ok": ok, "steps": steps, "loss": [first["loss"], last["loss"]],
                  "gen_loss": [first["gen_loss"], last["gen_loss"]],
                  "disc_loss": [first["disc_loss"], last["disc_loss"]], "mfu_last": last.get("mfu")}))
sys.exit(0 if ok else 1)
EOF
}

curve() {  # issue 13 on the GPU: ELECTRA and a compute-matched MLM on the news store (bf16, one GPU), exported
    # and tarred into $OUT for fine-tuning elsewhere. Needs the store and tokenizer under $CURVE_DATA (default .gpu,
    # carried). Each run has a wall-clock limit: SIGUSR1 makes it checkpoint and stop (exit 75), and the export takes
    # the newest step either way. Extra overrides after the defaults (on a CPU: train.precision=fp32 ...).
    local work=${CURVE_DIR:-/tmp/curve} data=${CURVE_DATA:-.gpu} py=${PYTHON:-python3}
    local steps=${CURVE_STEPS:-2400} secs=${CURVE_SECONDS:-240}
    rm -rf "$work" && mkdir -p "$work" || return 1
    # the trainer's own fused torch AdamW (no "optimizer" block): DeepSpeed's FusedAdam would JIT-compile first
    "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("optimizer"); json.dump(d, open(sys.argv[2], "w"))' \
        "${CURVE_DS:-ds_configs/zero0_bf16.json}" "$work/ds.json" || return 1
    local args=(tiny "data.sources=[$data/store]" "data.tokenizer=$data/tokenizer" train.precision=bf16
                model.kernels=triton train.global_batch=128 optim.lr=2e-3 optim.warmup_steps=300
                "deepspeed.generator=$work/ds.json" "deepspeed.discriminator=$work/ds.json" logging.every=100
                logging.tensorboard=false logging.progress_bar=false checkpoint.every=$((steps / 4))
                checkpoint.keep_last=8 "$@")
    # the MLM gets the FLOPs of the widest ELECTRA asked for (electra_g1's generator is as wide as the discriminator)
    local match=()
    [[ " ${CURVE_KINDS:-mlm electra_g1} " =~ \ electra_(g1|gf|t1)\  ]] && match=(model.generator_hidden_ratio=1.0)
    local mlm
    mlm=$("$py" -c "
import json, sys
sys.path.insert(0, 'bench')
from electra_vs_mlm import matched_steps
vocab = json.load(open('$data/store/manifest.json'))['vocab_size']
print(matched_steps('tiny', sys.argv[1:], $steps, vocab)['mlm'])" "${args[@]:1}" "${match[@]}") || return 1
    echo "curve: electra $steps steps, mlm $mlm steps (same FLOPs), $secs s limit each"
    # CURVE_KINDS: which runs, in order (each exported and tarred as soon as it ends): electra, mlm, electra_g1
    # (a generator as wide as the discriminator: the width at which the MLM left the bag-of-words plateau here) and
    # electra_gf (that generator alone first, docs/results.md §4b) and electra_t1 (that generator sampled at T=1: once
    # it has left the plateau its samples are plausible in context, and T=2's rare pieces only teach token identity);
    # every kind runs `tiny`'s recipe (corrective LM, RTD on replaceable tokens, T=1; docs/results.md §8) except
    # electra_rtd: pure replaced-token detection as `tiny` had it before (T=2, every token, no corrective LM)
    local name kind n extra
    for name in ${CURVE_KINDS:-mlm electra_g1}; do
        kind=${name%%_*}; extra=(); n=$steps
        [[ $kind == mlm ]] && n=$mlm
        [[ $name == electra_g1 ]] && extra=(model.generator_hidden_ratio=1.0)
        # generator first: a full-width generator alone for the first 2/3 of the steps (it left the plateau at
        # ~1,900 steps of batch 128 in docs/results.md §4b), then both
        [[ $name == electra_gf ]] && extra=(model.generator_hidden_ratio=1.0 "objective.disc_start_step=$((n * 2 / 3))")
        [[ $name == electra_t1 ]] && extra=(model.generator_hidden_ratio=1.0 objective.temperature=1.0)
        [[ $name == electra_rtd ]] && extra=(objective.temperature=2.0 objective.rtd_on_specials=true
                                             objective.disc_mlm_weight=0)
        local t0=$SECONDS
        timeout -s USR1 -k 30 "$secs" "$py" -m gpt_ds.cli pretrain "${args[@]}" "${extra[@]}" "objective.kind=$kind" \
            "run.dir=$work/$name" "train.max_steps=$n"
        echo "curve: $name pretrain exit $? in $((SECONDS - t0)) s"
        "$py" -m gpt_ds.cli export "$work/$name" --out "$work/export-$name" || return 1
        cp "$work/$name/metrics.jsonl" "$work/export-$name/metrics.jsonl"
        # the encoder that gets fine-tuned only (an MLM's is its "generator"): a file back is at most 16 MiB
        local enc=discriminator
        [[ $kind == mlm ]] && enc=generator
        tar -C "$work" -czf "$out/curve-$name.tgz" "export-$name/$enc" "export-$name/gpt_ds_export.json" \
            "export-$name/metrics.jsonl" || return 1
    done
    ls -l "$out"/curve-*.tgz
    tail -qn 1 "$work"/*/metrics.jsonl
}

run() {
    out=${OUT:-runs/gpu_check}
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
    fi
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
      python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)"; } 2>&1 | tee "$out/summary.txt"
    grep -E '^Sig(Blk|Ign)' /proc/self/status | tr '\n' ' ' | sed 's/^/signal masks: /;s/$/\n/' >>"$out/summary.txt"
    # DeepSpeed's JIT builder (FusedAdam) cannot parse arch names like "9.0a" that CUDA images put in this variable
    TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") && \
        export TORCH_CUDA_ARCH_LIST
    local which=${1:-all}
    # most telling first: numerics, then the trainer end to end, then issue 13's pretraining, then the speed benches
    # with what is left of DEADLINE (seconds since the script started; a device call has 600)
    DEADLINE=${DEADLINE:-565}
    if [[ $which == all || $which == kernels ]]; then  # the kernel tests' numerics, compiled Triton on the GPU
        part kernels 75 env GPT_DS_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider -m device_numerics \
            tests/test_kernels_generator.py tests/test_kernels_discriminator.py
    fi
    if [[ $which == all || $which == smoke ]]; then
        part smoke 120 bash "$self" _smoke
    fi
    if [[ $which == all || $which == curve ]]; then
        part curve "${CURVE_LIMIT:-330}" bash "$self" _curve
    fi
    if [[ $which == all || $which == heads ]]; then
        part heads 170 python3 bench/heads.py --device cuda
    fi
    if [[ $which == all || $which == step ]]; then
        part step 170 python3 bench/pretrain_step.py --device cuda --presets electra-small,electra-base --batch 64 \
            --steps 5
    fi
}

case ${1:-} in
    wheels) wheels ;;
    run) shift; run "$@" ;;
    _smoke) shift; smoke "$@" ;;
    _curve) shift; out=${OUT:-runs/gpu_check}; mkdir -p "$out"; curve "$@" ;;
    *) echo "usage: bash bench/gpu_check.sh wheels | run [kernels|smoke|curve|heads|step|all]" >&2; exit 2 ;;
esac
