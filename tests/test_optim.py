"""Optimizers, learning-rate schedules and layer-wise rate decay, against their references: transformers'
schedulers, torch's AdamW and SGD, transformers' Adafactor; weight-decay masks; each optimizer training a
sharded grid whose replicas follow HF's schedule at their own peaks; per-family layer depths; the config's
one-line errors."""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from flaxft.compiled import CompiledSteps
from flaxft.config import MeshConfig, TrainConfig, load_config
from flaxft.config_schema import LR_SCHEDULES, OPTIMIZERS
from flaxft.errors import FlaxftError
from flaxft.grid import Grid
from flaxft.model import build, config_from_hf, param_shapes
from flaxft.losses import Objective
from flaxft.optim import make_optimizer
from flaxft.parallel import make_mesh, put_batch
from flaxft.resume import MUST_MATCH, check_compatible
from tests.conftest import bert_config
from tests.test_families import tiny_config

TINY = bert_config(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def random_params(config, num_labels: int = 2, std: float = 0.1) -> dict:
    """Params of the model's shapes without compiling its initialisation: normal(0, std), LayerNorm scales 1."""
    rng = np.random.default_rng(0)
    return traverse_util.unflatten_dict({
        path: (np.ones if path[-1] == "scale" else lambda s: rng.normal(0.0, std, s))(x.shape).astype(np.float32)
        for path, x in param_shapes(config, num_labels).items()})


def hf_rates(name: str, peak: float, warmup: int, total: int, steps: int, **kwargs) -> np.ndarray:
    """The rate of torch SGD under transformers.get_scheduler at steps 0 .. steps-1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = transformers.get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                                           scheduler_specific_kwargs=kwargs)
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() without optimizer.step()
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return np.asarray(rates)


# (schedule, warmup steps, total steps, scheduler_specific_kwargs = the same-named train.* keys)
SCHEDULE_CASES = [
    ("linear", 0, 10, {}), ("linear", 3, 20, {}), ("linear", 5, 5, {}),
    ("cosine", 3, 20, {}), ("cosine", 0, 17, {"num_cycles": 1.5}),
    ("cosine_with_restarts", 2, 30, {}), ("cosine_with_restarts", 4, 40, {"num_cycles": 3}),
    ("cosine_with_restarts", 0, 25, {"num_cycles": 2}),
    ("polynomial", 3, 20, {}), ("polynomial", 5, 30, {"lr_end": 1e-5, "power": 2.0}),
    ("polynomial", 0, 12, {"power": 0.5}),
    ("constant", 0, 10, {}), ("constant", 4, 10, {}),  # HF's constant ignores warmup
    ("constant_with_warmup", 4, 15, {}), ("constant_with_warmup", 0, 6, {}),
    ("inverse_sqrt", 0, 30, {}), ("inverse_sqrt", 5, 30, {}),
]


def test_every_schedule_is_tested():
    assert {case[0] for case in SCHEDULE_CASES} == set(LR_SCHEDULES)


@pytest.mark.parametrize("name, warmup, total, kwargs", SCHEDULE_CASES)
def test_schedules_equal_transformers_at_every_step(name, warmup, total, kwargs):
    """Steps 0 .. total+4 at two peaks, traced (a grid's per-replica rates, vmapped under jit) and concrete."""
    peaks = [3e-5, 1e-3]
    cfg = TrainConfig(lr_schedule=name, warmup_steps=warmup, **kwargs)
    steps = jnp.arange(total + 5)

    @jax.jit
    def traced(peaks):
        return jax.vmap(lambda peak: jax.vmap(make_optimizer(cfg, total, peak)[1])(steps))(peaks)

    for peak, ours in zip(peaks, np.asarray(traced(jnp.asarray(peaks)))):
        theirs = hf_rates(name, peak, warmup, total, len(steps), **kwargs)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * peak)  # float32: 1e-7 of the peak
        concrete = np.asarray(jax.vmap(make_optimizer(cfg, total, peak)[1])(steps))
        np.testing.assert_allclose(concrete, theirs, rtol=1e-6, atol=1e-6 * peak)


# ---------------------------------------------------------------------- optimizers against torch / transformers


def _torch_reference(name: str, groups: list[dict], lr: float, wd: float, cfg: TrainConfig):
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.adam_b1, cfg.adam_b2), eps=cfg.adam_eps, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    assert name == "adafactor"  # HF's advice for an external learning rate
    return transformers.Adafactor(groups, lr=lr, weight_decay=wd, scale_parameter=False, relative_step=False,
                                  warmup_init=False)


@pytest.mark.parametrize("name, clip", [("adamw", 0.0), ("adamw", 1.0), ("sgd", 0.0), ("sgd", 1.0), ("adafactor", 0.0)])
def test_optimizers_equal_torch_and_transformers(name, clip):
    """Four steps on a kernel (decayed) and a bias (not), random gradients, constant rate: the params equal
    torch's AdamW / SGD(momentum, weight_decay) / transformers' Adafactor with a no-decay group for the bias;
    train.max_grad_norm clips as the Trainer does (torch.nn.utils.clip_grad_norm_ over all of them first)."""
    lr, wd = 1e-2, 0.1
    cfg = TrainConfig(optimizer=name, learning_rate=lr, lr_schedule="constant", warmup_ratio=0.0, weight_decay=wd,
                      max_grad_norm=clip)
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(6, 4)).astype(np.float32),
                        "bias": rng.normal(size=4).astype(np.float32)}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(4)]
    assert not clip or all(optax.tree.norm(g) > 2 * clip for g in grads)  # every step clipped
    kernel, bias = (torch.nn.Parameter(torch.tensor(params["dense"][k])) for k in ("kernel", "bias"))
    reference = _torch_reference(name, [{"params": [kernel]}, {"params": [bias], "weight_decay": 0.0}], lr, wd, cfg)
    tx = make_optimizer(cfg, 10)[0]
    state, ours = tx.init(params), jax.tree.map(jnp.asarray, params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, ours)
        ours = jax.tree.map(lambda p, u: p + u, ours, updates)
        kernel.grad, bias.grad = torch.tensor(g["dense"]["kernel"]), torch.tensor(g["dense"]["bias"])
        if clip:
            torch.nn.utils.clip_grad_norm_([kernel, bias], clip)
        reference.step()
    np.testing.assert_allclose(ours["dense"]["kernel"], kernel.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["dense"]["bias"], bias.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_skips_biases_and_layernorm(name):
    """A step on zero gradients is the weight decay alone: -rate * weight_decay * p on kernels and embeddings,
    nothing on biases and LayerNorm scales."""
    lr, wd = 1e-2, 0.1
    cfg = TrainConfig(optimizer=name, lr_schedule="constant", warmup_ratio=0.0, weight_decay=wd, learning_rate=lr)
    params = random_params(TINY)
    tx = make_optimizer(cfg, 10)[0]
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    flat_p, flat_u = traverse_util.flatten_dict(params), traverse_util.flatten_dict(updates)
    assert {path[-1] for path in flat_p} == {"kernel", "embedding", "bias", "scale"}
    for path, p in flat_p.items():
        decayed = path[-1] in ("kernel", "embedding")
        np.testing.assert_allclose(flat_u[path], -lr * wd * p if decayed else 0.0, rtol=1e-6, atol=1e-12,
                                   err_msg="/".join(path))


# ---------------------------------------------------------------------- training


def _batch(rows: int = 8, length: int = 12) -> dict:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(3, 99, size=(rows, length)).astype(np.int32),
            "token_type_ids": np.zeros((rows, length), np.int32),
            "attention_mask": np.ones((rows, length), np.int32),
            "labels": rng.integers(0, 2, size=rows).astype(np.int32), "weights": np.ones(rows, np.float32)}


# each optimizer with its own schedule and layer-wise decay: every piece meets every other somewhere
TRAIN_CASES = {
    "adamw": dict(learning_rate=3e-3, lr_schedule="cosine_with_restarts", num_cycles=2, layer_lr_decay=0.8),
    "adafactor": dict(learning_rate=1e-2, lr_schedule="inverse_sqrt", layer_lr_decay=0.9),
    "lion": dict(learning_rate=3e-3, lr_schedule="polynomial", power=2.0),
    "sgd": dict(learning_rate=0.3, lr_schedule="constant_with_warmup", momentum=0.5),
}


def test_every_optimizer_trains():
    assert set(TRAIN_CASES) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_trains_a_sharded_grid(name):
    """A grid of two peak rates (traced, one per replica) on data=2 x fsdp=2 x tensor=2, as the Trainer runs it:
    the optimizer state is placed (moments split like their parameters; adafactor's factored row and column
    vectors replicated), each replica logs transformers' schedule at its own peak, and 20 steps on one batch
    take both replicas' loss below 0.6 of the first."""
    if jax.device_count() != 8:
        pytest.fail("run the suite with JAX_NUM_CPU_DEVICES=8 (the README's test command)")
    steps, peak = 20, TRAIN_CASES[name]["learning_rate"]
    cfg = TrainConfig(optimizer=name, warmup_steps=2, **{**TRAIN_CASES[name], "learning_rate": [peak, peak / 2]})
    grid = Grid.of(cfg)
    optimizer = functools.partial(make_optimizer, cfg, steps)
    compiled = CompiledSteps(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)), build(TINY, 2), objective=Objective(),
                             token_type_ids=True, grid=grid)
    params = jax.tree.map(lambda x: np.stack([x, x]), random_params(TINY))
    state = compiled.place(params, optimizer(peak)[0], seed=0)

    up = "encoder/layer_0/mlp/input/kernel"  # [32, 64]: split over fsdp x tensor
    param_spec = traverse_util.flatten_dict(state.params)[tuple(up.split("/"))].sharding.spec
    assert param_spec == P("replica", "fsdp", "tensor")
    moments = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
               if leaf.ndim > 1 and up in jax.tree_util.keystr(path, simple=True, separator="/")]
    assert moments, "no optimizer state for the kernel"
    for path, leaf in moments:
        if leaf.shape[1:] == (32, 64):
            assert leaf.sharding.spec == param_spec, path
        else:  # adafactor's v_row [32] and v_col [64], and the (1,) second moment of a factored matrix
            assert name == "adafactor" and not any(leaf.sharding.spec[1:]), (path, leaf.shape, leaf.sharding.spec)

    step = compiled.train(state, 8, 12, None, optimizer=optimizer, learning_rate=cfg.learning_rate,
                          grad_accum_steps=1, dropout_rng="hash")
    batch = put_batch({k: np.stack([v, v]) for k, v in _batch().items()}, compiled.batch_sharding)
    metrics = []
    for _ in range(steps):
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    losses, rates = (np.asarray([m[k] for m in metrics]) for k in ("loss", "learning_rate"))
    assert np.all(losses[-1] < 0.6 * losses[0]), losses
    kwargs = {k: getattr(cfg, k) for k in ("num_cycles", "lr_end", "power") if k in TRAIN_CASES[name]}
    for replica, rate in enumerate(grid.replica_learning_rates):
        theirs = hf_rates(cfg.lr_schedule, float(rate), 2, steps, steps, **kwargs)
        np.testing.assert_allclose(rates[:, replica], theirs, rtol=1e-6, atol=1e-6 * rate)


# ---------------------------------------------------------------------- layer-wise learning-rate decay

FAMILY_CASES = ["bert", "roberta", "electra", "distilbert", "mpnet", "deberta-v2", "modernbert"]
# parameters outside the encoder layers and the head, by family: the embeddings' depth or the head's
BELOW_LAYERS = {"electra": [("embeddings", "projection", "kernel")], "mpnet": [("attention_bias", "embedding")],
                "deberta-v2": [("encoder", "relative_embeddings", "embedding"), ("encoder", "relative_norm", "scale")]}
ABOVE_LAYERS = {"modernbert": [("encoder", "final_norm", "scale")]}


def expected_depth(path: tuple, n: int) -> int:
    if path[0] == "head" or path[:2] == ("encoder", "final_norm"):
        return 0
    if path[0] == "encoder" and path[1].startswith("layer_"):
        return n - int(path[1].removeprefix("layer_"))
    assert path[0] in ("embeddings", "attention_bias") or path[1].startswith("relative_"), path
    return n + 1


# every family with sgd, every optimizer with bert (the depths depend on the family, the scaling on neither)
DECAY_CASES = [(case, "sgd") for case in FAMILY_CASES] + [("bert", name) for name in OPTIMIZERS if name != "sgd"]


@pytest.mark.parametrize("case, name", DECAY_CASES)
def test_layer_lr_decay_gives_each_parameter_its_depths_rate(case, name):
    """One step on gradients of ones (no clipping, no weight decay) at two traced peaks: without the decay
    every parameter moves by -peak (the first step of each optimizer), with it by -peak * decay ** depth."""
    decay, peaks = 0.5, jnp.asarray([1e-3, 4e-3])
    config = config_from_hf(tiny_config(case).to_dict())
    n = config.num_layers
    extra = {"momentum": 0.0} if name == "sgd" else {}
    cfg = TrainConfig(optimizer=name, lr_schedule="constant", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=0.0,
                      layer_lr_decay=decay, **extra)
    flat = param_shapes(config, 3)
    params = traverse_util.unflatten_dict({k: jnp.zeros(v.shape, v.dtype) for k, v in flat.items()})

    @jax.jit
    def updates(peak):
        def step(cfg):
            tx = make_optimizer(cfg, 10, peak)[0]
            return traverse_util.flatten_dict(tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params),
                                                        params)[0])
        return step(cfg), step(dataclasses.replace(cfg, layer_lr_decay=None))

    decayed, plain = jax.vmap(updates)(peaks)
    spots = {("embeddings", "word_embeddings", "embedding"): n + 1,
             ("encoder", "layer_0", "attention", "query", "kernel"): n,
             ("encoder", f"layer_{n - 1}", "mlp", "output", "kernel"): 1, ("head", "out", "kernel"): 0,
             **{path: n + 1 for path in BELOW_LAYERS.get(case, [])}, **{path: 0 for path in ABOVE_LAYERS.get(case, [])}}
    assert spots.keys() <= flat.keys(), sorted(spots.keys() - flat.keys())
    for path in flat:
        depth = expected_depth(path, n)
        assert spots.get(path, depth) == depth, path
        rate = -np.asarray(peaks).reshape(-1, *[1] * len(flat[path].shape))
        np.testing.assert_allclose(plain[path], np.broadcast_to(rate, plain[path].shape), rtol=1e-5, err_msg=str(path))
        np.testing.assert_allclose(decayed[path], plain[path] * decay**depth, rtol=1e-6, err_msg=str(path))


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize("override, words", [
    (["train.optimizer=adam"], "adamw, adafactor, lion, sgd"),
    (["train.lr_schedule=cosine_annealing"], "linear, cosine, cosine_with_restarts"),
    (["train.momentum=0.5"], "train.momentum=0.5 has no effect with train.optimizer=adamw; unset it, or use "
                             "train.optimizer=sgd"),
    (["train.num_cycles=2"], "has no effect with train.lr_schedule=linear"),
    (["train.lr_end=1e-6", "train.lr_schedule=cosine"], "train.lr_schedule=polynomial"),
    (["train.power=2", "train.lr_schedule=constant_with_warmup"], "train.power=2.0 has no effect"),
    (["train.adam_eps=1e-6", "train.optimizer=lion"], "use train.optimizer=adamw"),
    (["train.adam_b2=0.99", "train.optimizer=adafactor"], "train.optimizer=adamw or lion"),
    (["train.lr_schedule=constant", "train.warmup_steps=10"], "ignores warmup"),
    (["train.lr_schedule=polynomial", "train.lr_end=1e-4", "train.learning_rate=[1e-3,5e-5]"], "must be below"),
    (["train.layer_lr_decay=0"], "must be in (0, 1]"),
    (["train.layer_lr_decay=1.5"], "must be in (0, 1]"),
    (["train.optimizer=sgd", "train.momentum=1"], "must be in [0, 1)"),
    (["train.lr_schedule=cosine", "train.num_cycles=0"], "must be > 0"),
    (["train.lr_schedule=polynomial", "train.power=0"], "must be > 0"),
])
def test_contradictory_optimizer_settings_are_one_line_errors(override, words):
    with pytest.raises(FlaxftError) as e:
        load_config(overrides=override)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_settings_for_the_chosen_optimizer_and_schedule_load():
    t = load_config(overrides=["train.optimizer=sgd", "train.momentum=0.5", "train.lr_schedule=polynomial",
                               "train.lr_end=1e-6", "train.power=2", "train.layer_lr_decay=0.9"]).train
    assert (t.optimizer, t.momentum, t.lr_schedule, t.lr_end, t.power, t.layer_lr_decay) == \
        ("sgd", 0.5, "polynomial", 1e-6, 2.0, 0.9)
    assert load_config(overrides=["train.lr_schedule=constant", "train.warmup_ratio=0"]).train.lr_schedule == "constant"
    assert load_config(overrides=["train.optimizer=lion", "train.adam_b2=0.99"]).train.adam_b2 == 0.99


def test_a_checkpoint_of_another_optimizer_is_refused():
    def meta(train: dict) -> dict:
        return {**{key: None for key in MUST_MATCH}, "total_steps": 10, "config": {"train": train}}

    with pytest.raises(FlaxftError, match="saved with train.optimizer=adamw, not lion"):
        check_compatible(meta({"optimizer": "adamw"}), meta({"optimizer": "lion"}), "ckpt")
    check_compatible(meta({}), meta({"optimizer": "adamw"}), "ckpt")  # saved before the key existed: adamw
