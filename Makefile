# Two commands do everything on a fresh machine: `make demo` and `make test`.
# TORCH pins the torch + torchvision pair the local index carries (CUDA builds that run on the CPU); elsewhere e.g. `make test TORCH="torch torchvision"`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.14.1 torchvision==0.29.1
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo pretrain-demo detect-demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[train,test,export,detect,integrations]"
	touch $@

setup: $(STAMP)

# The main job: train hiera_nano on the embedded digits (>= 97% val top-1 in well under 3 minutes on 2 CPU cores).
demo: setup
	$(BIN)/bettervit train --model hiera_nano --img-size 32 --epochs 15 --lr 2e-3 --threads 1 --output runs/demo --overwrite

# Self-supervised pretraining on the digits' unlabelled train images, then 10 labels per class: scratch vs MAE (Hiera)
# vs MIM (EVA-02, taught by that MAE encoder), fine-tuned, linear probe and k-NN, beside the pixel baselines; every
# step with the CLI's defaults. About 10 minutes on 2 CPU cores; table and curves in runs/fewlabel.
pretrain-demo: setup
	$(BIN)/python benchmarks/bench_fewlabel.py --threads 2 --output runs/fewlabel

# Detection: Mask R-CNN on hiera_nano (FPN), trained from scratch on the embedded digit scenes, COCO box and mask AP on
# their val scenes; settings, times and APs measured in benchmarks/README.md ("Detection"). Run dir: runs/detect-demo.
detect-demo: setup
	$(BIN)/bettervit detect train --detector mask_rcnn --backbone hiera_nano --data digit-scenes:1200 --img-size 192 --epochs 4 --threads 2 --output runs/detect-demo --overwrite

test: setup
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (torchrun / DDP, ONNX export, CLI training runs, full-size
# models), a few minutes on 2 CPU cores. CI runs `make test`.
.PHONY: test-fast
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
