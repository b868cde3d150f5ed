import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from flaxft.config import Config, help_text, load_config, markdown_reference
from flaxft.errors import FlaxftError

ROOT = pathlib.Path(__file__).resolve().parents[1]
GLUE_TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_every_glue_config_loads(task):
    cfg = load_config(ROOT / "configs" / "glue" / f"{task}.yaml")
    assert cfg.data.task == task
    assert cfg.train.batch_size == 32 and cfg.data.max_seq_length == 128  # from the shared base
    assert cfg.data.packing  # the training default since issue #16's seed study (README, "Length buckets")
    assert cfg.output_dir == f"outputs/{task}"


def test_custom_config_loads():
    cfg = load_config(ROOT / "configs" / "custom.yaml", ["data.train_file=t.csv"])
    assert cfg.data.task is None and cfg.data.text_columns == ["text"]
    assert cfg.data.packing


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs/glue/mrpc.yaml", [
        "train.learning_rate=5e-5", "train.epochs=3", "train.batch_size=16", "data.text_columns=[sentence1,sentence2]",
        "model.name_or_path=/tmp/model", "train.max_steps=7", "data.bucket_boundaries=[32,64,128]", "output_dir=/tmp/o"])
    assert cfg.train.learning_rate == 5e-5 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.epochs == 3.0 and cfg.train.batch_size == 16 and cfg.train.max_steps == 7
    assert cfg.data.text_columns == ["sentence1", "sentence2"]
    assert cfg.data.bucket_boundaries == [32, 64, 128]
    assert cfg.model.name_or_path == "/tmp/model" and cfg.output_dir == "/tmp/o"


def test_null_override_and_roundtrip(tmp_path):
    cfg = load_config(ROOT / "configs/glue/mrpc.yaml", ["train.max_steps=null"])
    assert cfg.train.max_steps is None
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("override, words", [
    ("train.learnig_rate=1e-5", ["unknown config key 'train.learnig_rate'", "train.learning_rate"]),
    ("data.max_seq_len=64", ["unknown", "data.max_seq_length"]),
    ("train.batch_size=abc", ["train.batch_size", "must be int"]),
    ("train.batch_size=3.5", ["must be int"]),
    ("train.learning_rate=fast", ["train.learning_rate", "must be float"]),
    ("model.random_init=maybe", ["must be bool"]),
    ("train.batch_size", ["KEY=VALUE"]),
    ("data.max_seq_length=1024", ["between 8 and 512"]),
    ("train.dtype=float16", ["float32 or bfloat16"]),
    ("data.bucket_boundaries=[64,32]", ["increasing"]),
    ("train=3", ["section"]),
])
def test_bad_overrides(override, words):
    with pytest.raises(FlaxftError) as e:
        load_config(ROOT / "configs/glue/mrpc.yaml", [override])
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, words", [
    (["data.length_grouping=none", "data.packing=true"], ["data.length_grouping=none", "data.packing=true"]),
    (["data.length_grouping=megabatch", "train.seeds=[1,2]", "data.packing=false"], ["grid", "data.packing=true"]),
    (["data.length_grouping=none", "train.learning_rate=[1e-5,2e-5]", "data.packing=false"], ["grid"]),
    (["data.length_grouping=sorted"], ["'sorted'", "bucket, megabatch, none"]),
    (["data.stratify_labels=true", "data.packing=true"], ["data.stratify_labels=true", "data.packing=true"]),
    (["data.stratify_labels=true", "data.length_grouping=megabatch", "data.packing=false"],
     ["megabatch", "sorts each mega-batch"]),
    (["data.carry_leftovers=true", "data.packing=true"], ["data.carry_leftovers=true", "data.packing=false"]),
    (["data.carry_leftovers=true", "data.length_grouping=none", "data.packing=false"], ["data.length_grouping=bucket"]),
])
def test_trainer_style_batches_exclude_packing_and_grids(overrides, words):
    with pytest.raises(FlaxftError) as e:
        load_config(ROOT / "configs/glue/mrpc.yaml", overrides)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
    for grouping in ("none", "megabatch"):
        cfg = load_config(ROOT / "configs/glue/mrpc.yaml", [f"data.length_grouping={grouping}", "data.packing=false"])
        assert cfg.data.length_grouping == grouping


def test_unknown_key_in_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"train": {"epocs": 2}}))
    with pytest.raises(FlaxftError, match="did you mean 'train.epochs'"):
        load_config(tmp_path / "c.yaml")


def test_missing_config_file():
    with pytest.raises(FlaxftError, match="not found"):
        load_config("nope.yaml")


def test_base_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  seed: 7\n  epochs: 2\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  epochs: 4\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.train.seed == 7 and cfg.train.epochs == 4.0


def config_command(*args, cwd=ROOT):
    """`python -m flaxft.config ARGS` with this checkout's flaxft."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "flaxft.config", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_files_command_lists_the_base_chain():
    p = config_command("--files", "configs/glue/mrpc.yaml")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{ROOT / 'configs/glue/mrpc.yaml'}\n{ROOT / 'configs/base.yaml'}\n"
    assert p.stderr == ""


def test_files_command_cycle_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: ./a.yaml\ntrain:\n  seed: 1\n")
    p = config_command("--files", "a.yaml", cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "flaxft: error: config file 'a.yaml' includes itself through `base:`; remove the cycle\n"


def test_files_command_missing_base_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: ../nope.yaml\n")
    p = config_command("--files", str(tmp_path / "a.yaml"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == (f"flaxft: error: config file '{tmp_path / '../nope.yaml'}' not found; "
                        "pass an existing YAML file, e.g. --config configs/glue/mrpc.yaml\n")


def test_importing_config_is_cheap():
    """tpu/common.sh runs `python -m flaxft.config` on a workstation: PyYAML only, no JAX, no etils."""
    code = "import sys, flaxft.config; print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'etils', 'numpy'}))"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout == "[]\n", p.stderr


def test_help_lists_every_key():
    text = help_text()
    for key in ["output_dir", "model.name_or_path", "data.task", "data.path", "data.max_seq_length",
                "data.num_buckets", "data.train_file", "data.validation_file", "data.test_file",
                "data.text_columns", "data.label_column", "train.epochs", "train.max_steps",
                "train.batch_size", "train.learning_rate", "train.seed"]:
        assert f"  {key} " in text
    assert Config().train.seed == 42


def test_readme_configuration_reference_is_current():
    """Regenerate with: python -c "import flaxft.config as c; print(c.markdown_reference())"."""
    assert markdown_reference() in (ROOT / "README.md").read_text()
