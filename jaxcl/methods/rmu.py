"""RMU: Representation Misdirection for Unlearning (Li et al., "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning", 2024).

The activations ``h_l`` at one layer ``l`` are steered towards a fixed random direction on the
forget set and held at the frozen original model's on the retain set. With ``u`` drawn once,
uniform in ``[0, 1)^D`` and normalised (as the reference), ``c`` the steering coefficient and
``theta_0`` the frozen model unlearning starts from:

    F(theta) = (1 / N_f) * sum_{t in forget mask} (1 / D) || h_l(theta; x_f)_t - c * u ||^2
    R(theta) = (1 / N_r) * sum_{t in retain mask} (1 / D) || h_l(theta; x_r)_t - h_l(theta_0; x_r)_t ||^2
    L(theta) = F(theta) + alpha * R(theta)

``N``: the scored tokens of the batch (a language model's answer tokens; open-unlearning averages
per sequence, then over the batch; the WMDP code over every token). Only some parameters train:
the reference updates the MLP down-projection of layers ``l-2 .. l``; here the optimizer's final
updates are multiplied by a 0/1 mask (so Adam's moments, weight decay and clipping leave the
frozen parameters exactly unchanged).

Language models: ``h_l`` is the residual stream after decoder layer ``layer``
(:func:`jaxcl.models.llama.hidden_at`; ``layer`` is clipped to the last layer of a shallower
model), trained parameters: ``update`` (names of :data:`jaxcl.models.llama.LINEARS` or the norms)
of layers ``layer - update_span + 1 .. layer``. Classifiers: ``h_l`` is the penultimate
representation (``model.features``, one position per example) and every parameter below it trains
(the head is masked; it has no gradient anyway).

Defaults from the WMDP reference code: ``layer = 7``, layers 5..7's ``w_down``, ``c = 20``,
``alpha = 100``, lr 5e-5 (AdamW there; open-unlearning's RMU config tunes ``alpha = 1000`` and a
larger ``c`` per model). The direction comes from ``direction_seed`` (the same ``u`` for every
run seed, as the reference's fixed seed). The frozen model's activations reach the loss through
the batch (:func:`jaxcl.data.context.reference`, set at the start of unlearning by
``consolidate``). No GU variant: RMU's retain term is not the retain NLL GU projects off.
"""

import jax
import jax.numpy as jnp
import optax

from ..data import context
from ..models import llama
from .base import LR, OPTIMIZER_OPTIONS, Hparam, Method, MethodSpec, optimizer_from, pop_optimizer, register

OPTIONS = {"layer": 7, "update_span": 3, "update": ("w_down",), "direction_seed": 0}


def rmu_distance(h_BxTxD, target, mask_BxT):
    """``(1 / N) sum_{t in mask} mean_d (h_t - target_t)^2``; ``target`` broadcasts to ``h``."""
    sq_BxT = jnp.mean(jnp.square(h_BxTxD.astype(jnp.float32) - target), axis=-1)
    return (sq_BxT * mask_BxT).sum() / jnp.maximum(mask_BxT.sum(), 1.0)


def steering_direction(seed: int, d: int):
    """``u``: uniform in ``[0, 1)^d``, normalised to unit length (drawn once per ``seed``)."""
    u_D = jax.random.uniform(jax.random.key(seed), (d,), jnp.float32)
    return u_D / jnp.linalg.norm(u_D)


def steered_layer(model, layer: int) -> int:
    """The layer RMU steers: ``layer`` for a language model, clipped to its last layer."""
    return min(int(layer), model.cfg.n_layers - 1)


def representation(model, layer: int):
    """``(params, sub) -> (h_BxTxD, mask_BxT)``: the steered activations and the scored positions
    (a language model's answer tokens; a classifier's one position per example)."""
    if hasattr(model, "nll"):
        l = steered_layer(model, layer)

        def lm(params, sub):
            return llama.hidden_at(model.cfg, params, sub["tokens"], l), sub["mask"].astype(jnp.float32)

        return lm

    def clf(params, sub):
        h_BxD = model.features(params, sub["x"])
        return h_BxD[:, None], jnp.ones(h_BxD.shape[:1] + (1,), jnp.float32)

    return clf


def update_mask(model, params_like, layer: int, span: int, names):
    """1 where RMU trains a parameter, 0 elsewhere (a tree like ``params_like``; a language
    model's stacked layer tensors get a per-layer (L, 1, ...) factor)."""
    if not hasattr(model, "nll"):
        return {k: jax.tree.map(lambda a: jnp.asarray(float(k != "head")), v) for k, v in params_like.items()}
    if getattr(model, "lora", None) == "adapters":  # jaxcl.models.lora.adapt's model
        raise ValueError(
            "rmu selects a Llama's layer parameters by name: it does not run on LoRA adapters; set model.lora.rank=0"
        )
    names = tuple(names)
    unknown = set(names) - set(llama.layer_shapes(model.cfg))
    if unknown:
        raise ValueError(
            f"rmu.update: no layer parameter(s) {sorted(unknown)}; valid: {', '.join(llama.layer_shapes(model.cfg))}"
        )
    l = steered_layer(model, layer)
    rows_L = (jnp.arange(model.cfg.n_layers) <= l) & (jnp.arange(model.cfg.n_layers) > l - int(span))
    zeros = lambda tree: jax.tree.map(lambda a: jnp.zeros((), jnp.float32), tree)  # noqa: E731
    mask = zeros(params_like)
    mask["layers"] = {
        k: (
            rows_L.astype(jnp.float32).reshape((-1,) + (1,) * (len(v.shape) - 1))
            if k in names
            else jnp.zeros(())
        )
        for k, v in params_like["layers"].items()
    }
    return mask


def masked_updates(mask) -> optax.GradientTransformation:
    """Multiply the updates by ``mask`` (a constant tree of 0/1 factors)."""
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, m: u * m, updates, mask))


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    rep = representation(model, options["layer"])
    ref = context.reference(lambda p, sub: rep(p, sub)[0], params_like, key="ref_hidden")

    def loss_fn(params, batch, key):
        del key
        h_f, m_f = rep(params, batch["forget"])
        target_D = hp["steering_coeff"] * steering_direction(options["direction_seed"], h_f.shape[-1])
        forget = rmu_distance(h_f, target_D, m_f)
        h_r, m_r = rep(params, batch)
        retain = rmu_distance(h_r, batch["ref_hidden"], m_r)
        return forget + hp["alpha"] * retain, {"rmu_forget": forget, "rmu_retain": retain}

    consolidate = context.freeze_current

    mask = update_mask(model, params_like, options["layer"], options["update_span"], options["update"])
    tx = optax.chain(optimizer_from(opt, hp["lr"]), masked_updates(mask))
    return Method(loss_fn, tx, data=ref, consolidate=consolidate)


SPEC = register(
    MethodSpec(
        "rmu",
        build,
        {
            "lr": LR(5e-5),
            "steering_coeff": Hparam(20.0, 0.0, None, help="norm c of the forget target c * u"),
            "alpha": Hparam(100.0, 0.0, None, help="weight of the retain activation term"),
        },
        {**OPTIMIZER_OPTIONS, **OPTIONS},
        "steer a layer's forget activations to a random direction, hold retain activations",
        kind="unlearn",
        paper="Li et al. 2024, The WMDP Benchmark (RMU)",
    )
)
