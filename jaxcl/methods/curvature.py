"""The loss-curvature memorisation edit (Merullo, Vatsavaya, Bushnaq and Lewis, "From Memorization
to Reasoning in the Spectrum of Loss Curvature", 2025). An edit; no training, no labels needed.

For each linear ``y = W a`` (W: out x in) K-FAC approximates the loss curvature (the Fisher
block of W) by ``F_W ~ G (x) A``, ``A = E[a a^T]`` over the layer's inputs and ``G = E[g g^T]``
over the gradients of the loss with respect to its outputs, on training text (the data's
``train_set``), the labels sampled from the model (``labels="sampled"``, the true Fisher; the
authors' ``--sample_labels``) or the true next tokens (``labels="true"``), ``g`` the gradient
of the batch-mean loss (the authors' scaling). With ``A = U_A diag(l_A) U_A^T``,
``G = U_G diag(l_G) U_G^T`` and ``C = U_G^T W U_A``, component ``(i, j)`` has curvature
``l_G[i] l_A[j]``; the edit keeps the highest-curvature components until they hold ``keep`` of
the total curvature mass and zeroes the rest (:func:`jaxcl.edits.curvature_edit`):

    W' = U_G (C * M) U_A^T,   M[i, j] = 1 for the top components by l_G[i] l_A[j] up to keep * sum

Low-curvature directions carry memorised, idiosyncratic data; removing them cuts verbatim
recitation while perplexity holds (fact retrieval and arithmetic suffer, the paper finds).
Defaults from the authors' code (goodfire-ai/memorization_kfac): the MLP projections
(``targets``: gate, up, down; attention ``wq, wk, wv, wo`` optional), keep mass 0.8 (their
README's example), pairwise product selection; ``layers`` (indices, empty: all) restricts the edit.
``curvature-random`` is the paper's control: as many components removed per layer at random
positions of random orthogonal bases.

Statistics by :func:`kfac_factors`: one compiled ``lax.scan`` over full batches of
``batch_size`` rows. A Llama: zero perturbations added to every target linear's output
(:func:`jaxcl.models.llama.tapped_hidden`), whose gradient is ``g``, and the inputs it returns
are ``a``. A classifier (dense layers with a bias, one position per example): per-example
gradients give ``g`` (the bias gradient) and ``a a^T = K K^T / |g|^2`` (K the kernel gradient
``a g^T``); examples with ``g = 0`` add nothing to A.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..edits import curvature_edit
from ..models import llama
from .base import Hparam, Method, MethodSpec, register

MLP_TARGETS = ("w_gate", "w_up", "w_down")


def _chunks(sub: dict, batch_size: int) -> dict:
    n = jax.tree.leaves(sub)[0].shape[0]
    if n == 0:
        raise ValueError("curvature: empty data set")
    b = min(batch_size, n)
    nb = n // b
    return jax.tree.map(lambda a: a[: nb * b].reshape((nb, b) + a.shape[1:]), sub)


def _labels(key, logits, true, labels: str):
    return jax.random.categorical(key, jax.lax.stop_gradient(logits)) if labels == "sampled" else true


def llama_factors(cfg, params, sub: dict, key, *, targets, batch_size: int, labels: str) -> dict:
    """``{name: {"A": (L, in, in), "G": (L, out, out)}}`` of the Llama's linears ``targets`` over
    ``sub = {'tokens', 'mask'}`` (the positions whose target is in the mask), token-averaged."""
    L, shapes = cfg.n_layers, llama.layer_shapes(cfg)
    chunks = _chunks(sub, batch_size)

    def body(acc, xs):
        mb, k = xs
        toks, m = mb["tokens"], mb["mask"][:, 1:].astype(jnp.float32)
        N = toks.shape[0] * (toks.shape[1] - 1)
        taps = {t: jnp.zeros((L, N, shapes[t][1]), jnp.float32) for t in targets}

        def loss(taps):
            h, ins = llama.tapped_hidden(cfg, params, toks[:, :-1], taps)
            y = _labels(k, llama.head(cfg, params, h), toks[:, 1:], labels)
            lp = llama.target_logprobs(cfg, params, h, y)
            return -(lp * m).sum() / jnp.maximum(m.sum(), 1.0), ins

        g, ins = jax.grad(loss, has_aux=True)(taps)
        w = m.reshape(-1)
        new = {
            t: {
                "A": acc[t]["A"] + jnp.einsum("lni,lnj,n->lij", ins[t], ins[t], w.astype(ins[t].dtype)),
                "G": acc[t]["G"] + jnp.einsum("lno,lnp->lop", g[t], g[t]),
            }
            for t in targets
        }
        return new, m.sum()

    zero = {
        t: {"A": jnp.zeros((L,) + (shapes[t][0],) * 2), "G": jnp.zeros((L,) + (shapes[t][1],) * 2)}
        for t in targets
    }
    keys = jax.random.split(key, jax.tree.leaves(chunks)[0].shape[0])
    total, counts = jax.lax.scan(body, zero, (chunks, keys))
    return jax.tree.map(lambda x: x / jnp.maximum(counts.sum(), 1.0), total)


def dense_paths(params) -> list[tuple]:
    """The paths of every dict holding a 2-D ``kernel`` and a ``bias`` (a classifier's dense layers)."""
    out = []

    def walk(node, path):
        if isinstance(node, dict):
            if "kernel" in node and "bias" in node and jnp.ndim(node["kernel"]) == 2:
                out.append(path)
            for k in sorted(node, key=str):
                walk(node[k], path + (k,))

    walk(params, ())
    return out


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def dense_factors(model, params, sub: dict, key, *, batch_size: int, labels: str) -> dict:
    """``{path: {"A", "G"}}`` of a classifier's dense layers over ``sub = {'x', 'y'}``, from
    per-example gradients (g: the bias gradient; ``a a^T = K K^T / |g|^2``), example-averaged."""
    paths = dense_paths(params)
    chunks = _chunks(sub, batch_size)

    def one(x, y, k):
        logits = model.apply(params, x[None])[0]
        y = _labels(k, logits, y, labels)
        return jax.grad(lambda p: -jax.nn.log_softmax(model.apply(p, x[None])[0])[y])(params)

    def body(acc, xs):
        mb, k = xs
        g = jax.vmap(one)(mb["x"], mb["y"], jax.random.split(k, mb["y"].shape[0]))
        new = {}
        for p in paths:
            kern, b = _at(g, p)["kernel"], _at(g, p)["bias"]
            s = (b * b).sum(-1)
            inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
            new[p] = {
                "A": acc[p]["A"] + jnp.einsum("nio,njo,n->ij", kern, kern, inv),
                "G": acc[p]["G"] + jnp.einsum("no,np->op", b, b),
            }
        return new, jnp.float32(mb["y"].shape[0])

    zero = {}
    for p in paths:
        i, o = _at(params, p)["kernel"].shape
        zero[p] = {"A": jnp.zeros((i, i)), "G": jnp.zeros((o, o))}
    keys = jax.random.split(key, jax.tree.leaves(chunks)[0].shape[0])
    total, counts = jax.lax.scan(body, zero, (chunks, keys))
    return jax.tree.map(lambda x: x / counts.sum(), total)


def build(model, hp, params_like, **options):
    del params_like
    o = options
    is_llama = isinstance(getattr(model, "cfg", None), llama.LlamaConfig)
    if is_llama:
        bad = set(o["targets"]) - set(llama.LINEARS)
        if bad:
            raise ValueError(f"curvature.targets: unknown {sorted(bad)}; valid: {', '.join(llama.LINEARS)}")

    def edit(params, data, hp_, key):
        k_stats, k_rand = jax.random.split(key)
        rand = k_rand if o["basis"] == "random" else None
        kw = dict(batch_size=o["batch_size"], labels=o["labels"])
        if not is_llama:
            f = dense_factors(model, params, data.train_set, k_stats, **kw)
            w = {p: _at(params, p)["kernel"] for p in f}
            new = curvature_edit(w, f, keep=hp_["keep"], random_key=rand)
            out = jax.tree.map(lambda a: a, params)  # a fresh tree of the same leaves
            for p, v in new.items():
                _at(out, p)["kernel"] = v
            return out
        targets = tuple(o["targets"])
        f = llama_factors(model.cfg, params, data.train_set, k_stats, targets=targets, **kw)
        layers = dict(params["layers"])
        new = curvature_edit({t: layers[t] for t in targets}, f, keep=hp_["keep"], random_key=rand)
        if o["layers"]:
            on = jnp.isin(jnp.arange(model.cfg.n_layers), jnp.asarray(o["layers"]))[:, None, None]
            new = {t: jnp.where(on, v, layers[t]) for t, v in new.items()}
        return {**params, "layers": {**layers, **new}}

    return Method(None, None, edit=edit, trains=False)


def _spec(name: str, basis: str, summary: str) -> MethodSpec:
    return register(
        MethodSpec(
            name,
            lambda model, hp, params_like, **o: build(model, hp, params_like, **{**o, "basis": basis}),
            {"keep": Hparam(0.8, 0.0, 1.0, help="fraction of the curvature mass kept")},
            {"targets": MLP_TARGETS, "layers": (), "labels": "sampled", "batch_size": 8},
            summary,
            kind="unlearn",
            paper="Merullo et al. 2025, From Memorization to Reasoning in the Spectrum of Loss Curvature",
            choices={"labels": ("sampled", "true")},
            full_weights=True,
        )
    )


SPEC = _spec("curvature", "kfac", "loss-curvature edit: keep the high-curvature K-FAC components")
RANDOM = _spec("curvature-random", "random", "the curvature edit's control: random bases, same rank removed")
