"""Process-wide state changes only at the edge: flaxft.runtime.setup(), which the commands call."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, toy_args

SNAPSHOT = """
import json, logging, sys
import jax
from jax._src.random import prng  # the registry of PRNG implementations (no public accessor)

def snapshot():
    return {"jax_config": {k: repr(v) for k, v in jax.config.values.items()}, "prngs": sorted(prng.prngs),
            "absl_level": logging.getLogger("absl").level}
"""

SCRIPT = SNAPSHOT + """
import importlib, pkgutil
before = snapshot()
import flaxft
modules = [m.name for m in pkgutil.walk_packages(flaxft.__path__, "flaxft.")]
for name in modules:
    importlib.import_module(name)
after_import = snapshot()
from flaxft.config import load_config
from flaxft.trainer import Trainer
args = json.loads(sys.argv[1])
trainer = Trainer(load_config(args[1], args[2:]))
after_trainer = snapshot()
from flaxft import runtime
runtime.setup(trainer.config)
after_setup = snapshot()
print("RESULT " + json.dumps({"modules": modules, "before": before, "after_import": after_import,
                              "after_trainer": after_trainer, "after_setup": after_setup}))
"""


def test_imports_and_a_trainer_change_no_global_state_and_setup_does(tiny_model, toy_data, tmp_path):
    out = tmp_path / "run"
    args = toy_args(tiny_model, toy_data, out, f"train.compilation_cache={tmp_path / 'xla'}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.split("RESULT ")[1])
    assert {"flaxft.trainer", "flaxft.checkpoint", "flaxft.steps", "flaxft.data.sources", "flaxft.dropout_bits",
            "flaxft.runtime", "flaxft.model.bert"} <= set(r["modules"])
    assert r["after_import"] == r["before"]   # importing every flaxft module
    assert r["after_trainer"] == r["before"]  # and constructing a Trainer
    changed = {k for k, v in r["after_setup"]["jax_config"].items() if r["before"]["jax_config"][k] != v}
    assert changed == {"jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs"}
    assert str(tmp_path / "xla") in r["after_setup"]["jax_config"]["jax_compilation_cache_dir"]
    assert r["after_setup"]["absl_level"] == 30 and r["after_setup"]["prngs"] == r["before"]["prngs"]


def test_the_dropout_prng_is_made_on_first_use_and_jax_registry_is_untouched():
    code = SNAPSHOT + """
import jax.numpy as jnp
from flaxft.dropout_bits import dropout_key, hash_impl
before, made = snapshot()["prngs"], hash_impl.cache_info().currsize
bits = jax.random.bits(dropout_key(jnp.zeros(2, jnp.uint32), "hash"), (4,))
print(json.dumps([before, made, snapshot()["prngs"], hash_impl.cache_info().currsize]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, made_at_import, after, made_at_use = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (made_at_import, made_at_use) == (0, 1) and before == after
