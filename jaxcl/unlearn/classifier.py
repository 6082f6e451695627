"""Unlearning a class from a classifier: the problem of a config, its original and its oracle,
a method's unlearning phase and the evaluation of an unlearned model (the pieces of the
``unlearn-class`` study; the language-model counterpart is :mod:`jaxcl.unlearn.lm`).

With ``D = D_r + D_f`` the training set (Fashion-MNIST, a :mod:`.scenarios` forget set ``D_f``):

- the **original** ``theta_o`` is the registry's ``finetune`` on ``D`` from a fresh
  initialisation, in training mode (BatchNorm: batch statistics; then recalibrated running
  statistics on the training data, :func:`jaxcl.unlearn.common.recalibrate`);
- the **oracle** ``theta_*`` is the same recipe on ``D_r`` only (retraining from scratch, the
  reference every unlearning method is measured against);
- a method unlearns ``D_f`` from ``theta_o`` in evaluation mode (:func:`unlearner`);
- the evaluation (:func:`evaluator`) is :func:`jaxcl.unlearn.eval.evaluate` (accuracies, MIA,
  CKA to the original and the oracle, a linear probe), the weight change
  ``||theta - theta_o||_2`` and the relearning attack's curve (:func:`jaxcl.unlearn.eval.relearn`).

Every function is per seed; :class:`Context` runs them over all seeds in one program
(``seeds_map``: ``vmap``, or a compiled ``lax.map`` for convolutional models on the CPU) and keeps
the original and the oracle in a :class:`jaxcl.unlearn.store.RunStore` when given a folder.
Random keys: ``fold_in(key(seed), role)`` with ``role`` one of :data:`ORIGINAL`, :data:`ORACLE`,
:data:`UNLEARN`, :data:`RELEARN`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import report
from ..batching import resolve_mode
from ..config import method_section, method_settings
from ..engine import check_finite
from ..loops import Phase, PhaseConfig, as_hparams, seeds_keys
from ..losses import with_grad_norm
from ..methods import MethodSpec, get_method
from ..models import from_config
from ..parallel import place_seeds, seeds_map
from . import eval as ev
from . import scenarios, ulira
from .common import UnlearnData, recalibrate
from .store import RunStore, fingerprint

N_CLASSES = 10  # Fashion-MNIST
ORIGINAL, ORACLE, UNLEARN, RELEARN = 1, 2, 3, 4  # key roles: fold_in(seed key, role)


def phase_config(section: dict, eval_size: int) -> PhaseConfig:
    """A :class:`PhaseConfig` from a ``train`` or ``unlearn`` section."""
    return PhaseConfig(
        section["steps"], section["batch_size"], section["eval_every"], section.get("eval_size", eval_size)
    )


def load_problem(cfg: dict, *, shapes_only: bool = False) -> tuple[UnlearnData, object]:
    """``(data, model)``: the forgetting problem on ``data.dataset`` (Fashion-MNIST by default;
    ``data.scenario`` of ``data.forget_class``) and the config's model. ``shapes_only``: zero
    images of the data set's shapes (:func:`jaxcl.data.loaders.placeholder`; the compile check,
    for a data set not on this machine such as CIFAR-10)."""
    from ..data import loaders

    d = cfg["data"]
    name = d.get("dataset", "fashion-mnist")
    ds = loaders.placeholder(name) if shapes_only else loaders.load(name)
    data = scenarios.make(
        ds, d["scenario"], d["forget_class"], n_per_class=d["n_per_class"] or None, n_test=d["n_test"] or None
    )
    return data, from_config(cfg["model"], data.x_train.shape[1:], ds.n_classes)


def role_keys(cfg: dict, role: int) -> jax.Array:
    """One key per seed for a role (original, oracle, unlearning, relearning)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, role))(seeds_keys(cfg["seed"], cfg["seeds"]))


def grad_norm_finetune(weight: float) -> MethodSpec:
    """``finetune`` with IAU's regulariser ``L + weight ||grad L||^2`` (not registered)."""
    fin = get_method("finetune")

    def build(model, hp, params_like, **options):
        m = fin.build(model, hp, params_like, **options)
        return m._replace(loss_fn=with_grad_norm(m.loss_fn, weight=weight))

    return dataclasses.replace(fin, name="finetune+grad-norm", build=build)


def trainer(model, cfg: dict, spec: MethodSpec | None = None, mesh=None) -> Callable:
    """Per seed ``(key, problem, hp) -> (params, nonfinite_step)``: a fresh initialisation
    trained by ``spec`` (``finetune``) with the ``train`` recipe on the problem's retain data, in
    training mode, then BatchNorm recalibration on that data. ``mesh``: batches over its ``data``
    axis."""
    view = model._replace(apply=model.apply_train) if hasattr(model, "apply_train") else model
    # from a random initialisation every weight trains (model.lora: the unlearning phases only)
    view = view._replace(lora=None)
    phase = Phase(
        view,
        spec or get_method("finetune"),
        phase_config(cfg["train"], cfg["unlearn"]["eval_size"]),
        mesh=mesh,
    )

    def fn(key, problem, hp):
        k_init, k_run = jax.random.split(key)
        out = phase.run(model.init(k_init), k_run, problem, hp)
        return recalibrate(model, out["params"], problem.x_retain[:4000]), out["nonfinite_step"]

    return fn


def unlearner(model, cfg: dict, name: str, mesh=None) -> tuple[Phase, dict]:
    """The unlearning :class:`Phase` of method ``name`` and its traced hyperparameters."""
    hp, opts = method_settings(cfg, name)
    spec = get_method(name, "unlearn")
    phase = Phase(model, spec, phase_config(cfg["unlearn"], cfg["unlearn"]["eval_size"]), mesh=mesh, **opts)
    return phase, as_hparams(spec, hp)


def evaluator(model, cfg: dict) -> Callable:
    """Per seed ``(params, key, data, params_orig, params_oracle) -> (metrics, relearn curve)``:
    the ``eval`` section's metrics, ``weight_change`` and the relearning attack's forget accuracy
    every ``relearn_every`` of ``relearn_steps`` steps."""
    e = cfg["eval"]

    def fn(params, key, data, p_orig, p_oracle):
        m = ev.evaluate(model, params, data, p_orig, p_oracle, eval_cap=e["eval_cap"])
        diff = [jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_orig))]
        m["weight_change"] = jnp.sqrt(sum(diff))
        curve = ev.relearn(
            model,
            params,
            data,
            key,
            steps=e["relearn_steps"],
            every=e["relearn_every"],
            n=e["relearn_n"],
            lr=e["relearn_lr"],
            batch_size=cfg["unlearn"]["batch_size"],
            eval_cap=e["eval_cap"],
        )
        return m, curve

    return fn


def forget_phi(model, cfg: dict) -> Callable:
    """Per seed ``(params, data) -> phi_N``: LiRA's logit-scaled confidence
    (:func:`jaxcl.unlearn.ulira.logit_confidence`) on the first ``eval.eval_cap`` forget examples,
    the statistic U-LiRA fits over seeds (the study's shadow models)."""
    cap = cfg["eval"]["eval_cap"]

    def fn(params, data):
        x, y = data.x_forget[:cap], data.y_forget[:cap]
        return ulira.logit_confidence(ev.batched(model.apply, params, x), y)

    return fn


def entry_key(cfg: dict, name: str) -> str:
    """A row's cache file name: ``oracle``, ``original``, or a method's name and a hash of its own
    settings (``iau-reg``: IAU's and the regulariser's weight; ``original-reg``: the weight)."""
    if name in ("oracle", "original"):
        return name
    if name == "original-reg":
        return f"{name}-{fingerprint({'iau_reg': cfg['iau_reg']})}"
    settings = dict(method_section(cfg, "iau" if name == "iau-reg" else name))
    if name == "iau-reg":
        settings.update(iau_reg=cfg["iau_reg"])
    return f"{name}-{fingerprint(settings)}"


@dataclasses.dataclass
class Context:
    """What every run and sweep of a config shares: the problem, the model, the cache, the
    original and the oracle (all seeds), and how they were obtained."""

    cfg: dict
    data: UnlearnData
    model: object
    store: RunStore | None
    params: dict  # "original", "oracle" (and "iau_original" once trained)
    timing: dict
    say: Callable
    evaluate_fn: Callable | None = None  # compiled on the first evaluate
    phi_fn: Callable | None = None  # compiled on the first evaluate
    mesh: object = None  # seeds over its seeds axis, training batches over its data axis

    def evaluate(self, params):
        """``(metrics, relearn curves)`` of ``params`` (all seeds; compiled once per run)."""
        axes = (0, 0, None, 0, 0)
        if self.evaluate_fn is None:
            fn = seeds_map(evaluator(self.model, self.cfg), axes, self.mesh, model=self.model)
            self.evaluate_fn = jax.jit(fn)
        k = role_keys(self.cfg, RELEARN)
        args = (params, k, self.data, self.params["original"], self.params["oracle"])
        return self.evaluate_fn(*place_seeds(args, axes, self.mesh))

    def phi(self, params):
        """LiRA's statistic on the forget examples, ``(S, N)`` (all seeds in one program)."""
        axes = (0, None)
        if self.phi_fn is None:
            self.phi_fn = jax.jit(
                seeds_map(forget_phi(self.model, self.cfg), axes, self.mesh, model=self.model)
            )
        return self.phi_fn(*place_seeds((params, self.data), axes, self.mesh))

    def evaluated(self, name: str, params, timing: dict, extra: dict | None = None) -> dict:
        """Evaluate ``params`` (all seeds) and return row ``name``'s entry ``{'metrics': {name:
        per-seed list}, 'relearn_curve': (S, E) list, 'ulira_phi': (S, N) list, 'timing',
        **extra}``, cached in the store."""
        m, curve = self.evaluate(params)
        entry = {
            "metrics": {k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in m.items()},
            "relearn_curve": np.asarray(curve, np.float64).tolist(),
            "ulira_phi": np.asarray(self.phi(params), np.float64).tolist(),
            "timing": timing,
            **(extra or {}),
        }
        if self.store:
            self.store.save_method(entry_key(self.cfg, name), entry)
        return entry

    def start(self, name: str):
        """The parameters a sweep of method ``name`` unlearns from (IAU's own regularised original
        when ``iau_reg_train``)."""
        if name != "iau" or not self.cfg["iau_reg_train"]:
            return self.params["original"]
        return self.regularised_original()

    def regularised_original(self):
        """IAU's original (all seeds): the original's recipe, same keys, with the loss
        ``L + iau_reg * ||grad L||^2`` (:func:`grad_norm_finetune`); trained once per run."""
        if "iau_original" not in self.params:
            spec = grad_norm_finetune(self.cfg["iau_reg"])
            axes = (0, None, None)
            fn = seeds_map(trainer(self.model, self.cfg, spec, self.mesh), axes, self.mesh, model=self.model)
            hp = as_hparams(get_method("finetune"), {"lr": self.cfg["train"]["lr"]})
            problem = self.data.learning(self.data.x_train, self.data.y_train)
            args = place_seeds((role_keys(self.cfg, ORIGINAL), problem, hp), axes, self.mesh)
            (p, bad), c_s, t_s = report.timed_jit(fn, *args)
            check_finite(bad, where="(training IAU's regularised original)")
            self.params["iau_original"] = p
            self.timing["iau_original"] = {"compile_s": c_s, "time_s": t_s}
            self.say(f"  IAU's regularised original {t_s:.1f}s")
        return self.params["iau_original"]


def prepare(cfg: dict, out: str | None, *, fresh: bool = False, verbose: bool = True, mesh=None) -> Context:
    """Load the problem and train (or load from ``<out>/cache``) the original and the oracle."""
    say = (lambda *a: print(*a, flush=True)) if verbose else (lambda *a: None)
    data, model = load_problem(cfg)
    d = cfg["data"]
    how = "vmapped" if resolve_mode("auto", model) == "vmap" else "in a compiled loop"
    if mesh is not None:
        how = f"vmapped on a mesh of {dict(mesh.shape)}"
    say(
        f"unlearn-class: {model.name}, scenario {d['scenario']}, class {d['forget_class']}, "
        f"{data.x_train.shape[0]} train ({data.x_forget.shape[0]} forget), {cfg['seeds']} seed(s) ({how})"
    )
    models_key = {
        "model": cfg["model"]["name"],
        "model_kw": cfg["model"].get(cfg["model"]["name"], {}),
        "data": d,
        "n_train": int(data.x_train.shape[0]),
        "n_forget": int(data.x_forget.shape[0]),
        "seeds": cfg["seeds"],
        "seed": cfg["seed"],
        "train": cfg["train"],
    }
    if cfg["model"].get("compute_dtype", "float32") != "float32":  # float32 caches keep their key
        models_key["compute_dtype"] = cfg["model"]["compute_dtype"]
    run_key = {"unlearn": cfg["unlearn"], "eval": cfg["eval"]}
    store = RunStore(out, models_key, run_key, fresh=fresh) if out else None
    k_orig, k_oracle = role_keys(cfg, ORIGINAL), role_keys(cfg, ORACLE)
    like = jax.eval_shape(jax.vmap(model.init), k_orig)  # trained params keep init's structure
    cached = store.load_models({"original": like, "oracle": like}) if store else None
    if cached is not None:
        params, meta = cached
        timing = {**meta["timing"], "loaded_from": store.models_dir}
        say(
            f"  original and oracle loaded from {store.models_dir} (trained in "
            f"{timing['original']['time_s']:.1f}s and {timing['oracle']['time_s']:.1f}s; --fresh retrains)"
        )
        return Context(cfg, data, model, store, dict(params), timing, say, mesh=mesh)
    axes = (0, None, None)
    fn = seeds_map(trainer(model, cfg, mesh=mesh), axes, mesh, model=model)
    hp = as_hparams(get_method("finetune"), {"lr": cfg["train"]["lr"]})
    params, timing = {}, {}
    for name, keys, problem in (
        ("original", k_orig, data.learning(data.x_train, data.y_train)),
        ("oracle", k_oracle, data.learning(data.x_retain, data.y_retain)),
    ):
        (params[name], bad), c_s, t_s = report.timed_jit(fn, *place_seeds((keys, problem, hp), axes, mesh))
        check_finite(bad, where=f"(training the {name})")
        timing[name] = {"compile_s": c_s, "time_s": t_s}
    where = ""
    if store:
        store.save_models(params, {"timing": timing})
        where = f" (saved to {store.models_dir})"
    say(f"  original {timing['original']['time_s']:.1f}s, oracle {timing['oracle']['time_s']:.1f}s{where}")
    return Context(cfg, data, model, store, params, timing, say, mesh=mesh)
