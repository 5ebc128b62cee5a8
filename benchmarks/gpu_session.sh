#!/usr/bin/env bash
# Everything issue #6 measures on a GPU, in one call of the device tool, most important first.
#
# It runs under the GPU machine's own python3 (torch, torchvision, timm, pandas, pyarrow,
# pillow, pytest there; no internet, no project install). dvclive cannot be installed there
# (it pulls in all of dvc), so a no-op stand-in for its `Live` is put on PYTHONPATH: the
# per-epoch metric files are the only thing lost. Prepare the git-ignored inputs here first
# (README, "Speed and several GPUs"):
#   shared-data/ccp-speed/photos        200 original CCP photos (speed benchmark)
#   shared-data/ccp-small/              all CCP photos, short side 224 px, + labels.csv (accuracy)
#   shared-data/ccp-finetune/           `bench_ccp_finetune.py prepare` of ccp-small
#   shared-data/lite0-imagenet-fp16.pth the offline Lite0 ImageNet weights by timm's names, fp16
# then: run(command="bash benchmarks/gpu_session.sh", carry=["shared-data"]); logs land in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/stubs:$PWD"
OUT="${OUT:-/tmp/gpu-session}"
mkdir -p /tmp/stubs/dvclive "$OUT"
cat > /tmp/stubs/dvclive/__init__.py <<'PY'
class Live:  # no-op stand-in: dvclive is not installable on the GPU machine
    def __init__(self, *args, **kwargs): self.step, self.summary = 0, {}
    def __enter__(self): return self
    def __exit__(self, *exc): return False
    def log_metric(self, *args, **kwargs): pass
    def next_step(self): pass
PY
step() { echo; echo "=== $1 ($(date +%T))"; }

step "machine"
nvidia-smi -L; python3 -c 'import torch, torchvision, timm; import pandas, numpy; print("torch", torch.__version__, "torchvision", torchvision.__version__, "timm", timm.__version__, "pandas", pandas.__version__, "numpy", numpy.__version__, "cpus", __import__("os").cpu_count())'

step "1. speed: reference-style loop vs ours, ResNet-50 @ 448 (issue goal: >= 1,400 images/s, >= 3.4x)"
python3 benchmarks/bench_train_speed.py --photos shared-data/ccp-speed/photos --photo-limit 0 --backbone resnet50 --size 448 \
    --batch 128 --compile --workers 16 --images 7680 --warmup 10 2>&1 | tee "$OUT/speed.log" | grep -v "^\s*$"

step "2. the cached-pixel loop waits for the GPU once per epoch"
python3 -m pytest -q -p no:cacheprovider tests/test_training.py -k waits_for_the_gpu 2>&1 | tail -3

step "3. accuracy: fine-tuning on CCP, fp32 reference loop vs the fast path (uncompiled: compiled went to NaN, README)"
python3 benchmarks/bench_ccp_finetune.py run --ccp shared-data/ccp-small --work-dir shared-data/ccp-finetune \
    --weights shared-data/lite0-imagenet-fp16.pth --size 224 --epochs 12 --workers 16 > "$OUT/finetune.log" 2>&1
grep -E "^\||^NVIDIA|^cpu:|^pixel cache|best val mAP|Error" "$OUT/finetune.log"

step "4. torchrun entry point with the nccl backend (1 process on this 1-GPU machine)"
sed 's/epochs: 12/epochs: 1/; s/compile: true/compile: false/' shared-data/ccp-finetune/params-fast_bf16.yaml > /tmp/params-nccl.yaml
torchrun --standalone --nproc_per_node 1 -m training.train --model fast_bf16 --dataset shared-data/ccp-finetune/dataset.parquet \
    --label-subset shared-data/ccp-finetune/label_subset.json --graph shared-data/ccp-finetune/label_graph.npz --features none.npz \
    --crawl-dir shared-data/ccp-small/photos --out-dir /tmp/nccl-run --live-dir /tmp/nccl-live --pixel-cache shared-data/ccp-finetune/pixels \
    --params /tmp/params-nccl.yaml 2>&1 | tail -3
step "done"
