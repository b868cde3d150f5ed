"""Scale-out: mesh layouts, parameter sharding, multi-process runs, gradient accumulation, bf16."""

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flaxft.config import MeshConfig, TrainConfig
from flaxft.errors import FlaxftError
from flaxft.model import build, init_params
from flaxft.optim import make_optimizer
from flaxft.parallel import check_batch_size, make_mesh, tree_shardings
from flaxft.losses import Objective
from flaxft.steps import TrainState, train_step
from tests.conftest import bert_config, toy_args

TINY_HF = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=128)
TINY = bert_config(**TINY_HF)


def need_8_devices():
    if jax.device_count() != 8:
        pytest.fail("run the suite with JAX_NUM_CPU_DEVICES=8 (the README's test command)")


def test_mesh_sizes_and_errors():
    need_8_devices()
    assert dict(make_mesh(MeshConfig()).shape) == {"replica": 1, "data": 8, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh(MeshConfig(data=2, fsdp=-1)).shape) == {"replica": 1, "data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(FlaxftError, match="does not fit 8 devices"):
        make_mesh(MeshConfig(data=-1, fsdp=3))
    with pytest.raises(FlaxftError, match="needs 4 devices but 8"):
        make_mesh(MeshConfig(data=2, fsdp=2, tensor=1))
    with pytest.raises(FlaxftError, match="at most one axis"):
        make_mesh(MeshConfig(data=-1, fsdp=-1))
    with pytest.raises(FlaxftError, match="multiple of 16"):
        check_batch_size(24, make_mesh(MeshConfig(data=2, fsdp=4)), micro_batches=2)


@pytest.mark.parametrize("data, fsdp, tensor", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_parameters_are_sharded_as_declared(data, fsdp, tensor):
    need_8_devices()
    mesh = make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor))
    params = init_params(TINY, 2, jax.random.key(0))
    sharded = jax.device_put(params, tree_shardings(mesh, params))
    layer = sharded["encoder"]["layer_0"]
    query = layer["attention"]["query"]["kernel"]                     # [32, 32]: heads split over tensor
    up = layer["mlp"]["input"]["kernel"]                              # [32, 64]
    down = layer["mlp"]["output"]["kernel"]                           # [64, 32]
    emb = sharded["embeddings"]["word_embeddings"]["embedding"]       # [30522, 32]
    shard = lambda x: x.addressable_shards[0].data.shape  # noqa: E731
    assert shard(query) == (32 // fsdp, 32 // tensor)
    assert shard(up) == (32 // fsdp, 64 // tensor)
    assert shard(down) == (64 // tensor, 32 // fsdp)
    assert shard(emb) == (30522 // tensor, 32 // fsdp)  # 30522 = 2 * 15261 splits over tensor=2
    assert shard(layer["attention_norm"]["scale"]) == (32,)  # small: replicated
    opt = jax.eval_shape(make_optimizer(TrainConfig(), 10)[0].init, params)
    opt_sh = tree_shardings(mesh, opt)  # optimizer moments follow their parameters
    mu = opt_sh[1][0].mu["encoder"]["layer_0"]["mlp"]["input"]["kernel"]
    assert mu.spec == up.sharding.spec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, devices, extra_env=None, processes=1):
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    if processes == 1:
        procs = [subprocess.Popen([sys.executable, "-m", "flaxft.train", *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, "-m", "flaxft.train", *args,
                                   f"distributed.coordinator_address=127.0.0.1:{port}",
                                   f"distributed.num_processes={processes}", f"distributed.process_id={i}"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(processes)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def _curve(out):
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return np.array([e["loss"] for e in events if "loss" in e]), summary


def test_same_loss_curve_on_every_layout_and_two_processes(tiny_model, toy_data, tmp_path):
    """20 steps with dropout: 1 device, 8 devices in three mesh layouts, and 2 processes x 4 devices."""
    runs = {
        "1dev": (1, 1, []),
        "data8": (8, 1, ["mesh.data=8"]),
        "data2_fsdp4": (8, 1, ["mesh.data=2", "mesh.fsdp=4"]),
        "data2_fsdp2_tensor2": (8, 1, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]),
        "2proc_x4": (4, 2, []),
    }
    curves = {}
    for name, (devices, processes, mesh) in runs.items():
        out = tmp_path / name
        args = toy_args(tiny_model, toy_data, out, "train.max_steps=20", "train.log_every_steps=1",
                        "data.bucket_boundaries=[64]", *mesh)
        _run(args, devices, processes=processes)
        curves[name] = _curve(out)
        assert curves[name][1]["num_devices"] == devices * processes
        assert not (out / "metrics.jsonl").read_text().count('"step": 1,') > 1  # process 0 writes alone
    ref_loss, ref_summary = curves["1dev"]
    assert len(ref_loss) == 20
    for name, (loss, summary) in curves.items():
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5, err_msg=name)
        for key in ("eval_loss", "eval_accuracy", "eval_f1"):
            assert abs(summary[key] - ref_summary[key]) < 1e-3, (name, key)


def test_gradient_accumulation_gives_the_same_update():
    """4 micro-batches of 4 == one batch of 16 (dropout off so both see the same function)."""
    cfg = bert_config(**TINY_HF, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build(cfg, 2)
    params = init_params(cfg, 2, jax.random.key(0))
    tx, schedule = make_optimizer(TrainConfig(learning_rate=1e-3, warmup_ratio=0.0), 10)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 16, size=16)
    mask = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
    weights = np.ones(16, np.float32)
    weights[13:] = 0  # filler rows must not count, wherever they land
    batch = {"input_ids": jnp.asarray(rng.integers(1000, 2000, size=(16, 16)) * mask, jnp.int32),
             "token_type_ids": jnp.zeros((16, 16), jnp.int32), "attention_mask": jnp.asarray(mask),
             "labels": jnp.asarray(rng.integers(0, 2, size=16), jnp.int32), "weights": jnp.asarray(weights)}

    def run(n):
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                           rng=jax.random.key_data(jax.random.key(1)))
        step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, objective=Objective(),
                                         grad_accum_steps=n))
        for _ in range(2):
            state, metrics = step(state, batch)
        return state, metrics

    (one, m1), (four, m4) = run(1), run(4)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_and_accumulation_run_end_to_end(tiny_model, toy_data, tmp_path):
    from flaxft.cli import run_main
    from flaxft.train import main

    out = tmp_path / "bf16"
    # 10 epochs: with 6, whether this tiny model leaves its plateau in time depends on the dropout draws
    args = toy_args(tiny_model, toy_data, out, "train.dtype=bfloat16", "train.grad_accum_steps=2",
                    "train.epochs=10", "model.remat=true")
    assert run_main(main, args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_accuracy"] >= 0.9, summary


def test_a_mesh_axis_a_dimension_cannot_take_is_logged_once_per_rule(caplog):
    """An MLP of 39 units cannot be split over tensor=2: the rule's spec drops that axis, and says so once
    for the rule (not per layer, nor again for the optimizer moments that follow the parameters)."""
    need_8_devices()
    cfg = bert_config(**{**TINY_HF, "intermediate_size": 39})
    mesh = make_mesh(MeshConfig(data=4, tensor=2))
    params = jax.eval_shape(lambda: init_params(cfg, 2, jax.random.key(0)))
    with caplog.at_level("INFO", logger="flaxft"):
        shardings = tree_shardings(mesh, params)
        tree_shardings(mesh, jax.eval_shape(make_optimizer(TrainConfig(), 10)[0].init, params))
    assert shardings["encoder"]["layer_1"]["mlp"]["input"]["kernel"].spec == P(None, None)
    said = [r.getMessage() for r in caplog.records if "does not divide a dimension of 39" in r.getMessage()]
    # one line per rule (mlp/input kernel and bias, mlp/output kernel), not one per leaf: 2 layers x (params, mu, nu)
    assert len(said) == 3 and all("mesh axis tensor (size 2)" in m for m in said)
