"""The Auto-CEI runner (``study: auto-cei``): does Automatic Curriculum Expert Iteration (Zhao et
al., ICLR 2025; :mod:`jaxcl.auto_cei`) answer more precisely than SFT, plain expert iteration and
GRPO with a fixed "I don't know" reward, refusing mostly the hard items?

Protocol:

1. **data**: the ``chain`` task of :mod:`jaxcl.tasks` (a running sum of 0/1 terms, each partial sum
   written as a reasoning step) at ``data.levels`` numbers of steps (the difficulty);
2. **base**: a small Llama (byte tokenizer) trained from scratch by SFT on a mix of every level,
   where a ``data.idk_fraction`` of the rows stop after a random number of steps and answer IDK
   (``=?``), so the IDK answer is in the model's repertoire (the authors start from R-Tuning);
3. **rows**, each ``post.rounds`` rounds of ``post.iterations`` iterations from the same base
   model: ``sft`` (registry ``finetune`` on the worked answers), ``ei`` (registry ``auto_cei``
   with ``steer=False``: expert iteration on the correct samples), ``grpo-idk`` (registry
   ``grpo``, reward 1 correct, ``data.idk_fixed_reward`` IDK, 0 wrong) and ``auto-cei``
   (``auto_cei``, its curriculum moving ``c1`` after every round from the precision and refusal
   rate measured on ``data.n_val`` held-out prompts per level; started from the base model's
   sampled answers as the authors do; a round that does not improve the objective is discarded
   and the climb turns or stops, :mod:`jaxcl.auto_cei`; the row reports the best round's model);
4. after every round, greedy answers to ``data.n_eval`` test prompts per level: accuracy, precision
   (correct / answered) and refusal rate (IDK / all), per level and pooled.

One compiled program per row (the rounds a ``lax.scan``, the iterations :func:`jaxcl.loops.run_chunks`,
the curriculum a pure state update between rounds), seeds vmapped.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import auto_cei as A
from .. import config, driver, grpo, hf, results, tasks
from ..config import ConfigError, method_settings
from ..driver import Report, Run
from ..engine import check_finite
from ..generate import Sampling, generate_ids
from ..loops import as_hparams, build_method, method_state, method_step, run_chunks, seeds_keys
from ..methods import get_method
from ..models import lm
from ..parallel import jit_seeds

ROWS = ("sft", "ei", "grpo-idk", "auto-cei")
DEFAULTS = {
    "model": lm.section("scratch", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
    "data": {
        "levels": (1, 2, 3, 4, 5, 6),  # reasoning steps of the chain task (its difficulty)
        "n_train": 2000,
        "n_val": 32,  # per level: what the curriculum measures
        "n_eval": 64,  # per level: the test prompts
        "prompt_len": 24,
        "answer_len": 16,  # completion tokens (steps, marker, answer, end token)
        "idk_fraction": 0.1,  # base SFT rows that answer IDK after a random number of steps
        "idk_fixed_reward": 0.5,  # grpo-idk: the IDK answer's reward (correct 1, wrong 0)
    },
    "base": {"steps": 500, "batch_size": 32, "lr": 3e-3},
    "post": {"rounds": 4, "iterations": 10, "batch_size": 8},  # batch_size: prompts per iteration
    "curriculum": {"lam": 0.2},  # the objective's lambda (the authors' scripts: 0.2)
    "rows": ROWS,
    "methods": ("finetune", "grpo", "auto_cei"),
    "seeds": 8,
    "seed": 0,
}
COLUMNS = [
    ("acc", "accuracy", "pct"),
    ("precision", "precision", "pct"),
    ("refusal", "refusal", "pct"),
    ("refusal_gap", "refusal hard - easy", "pct"),
    ("time_s", "time (s)", "seconds"),
]
BASE, POST = 1, 2


def validate(cfg: dict) -> None:
    d = cfg["data"]
    lm.check(cfg["model"], names=("scratch",), tokenizers=("byte",))
    config.check_each(cfg, "rows", ROWS, "row")
    levels = tuple(d["levels"])
    if len(levels) < 2 or any(not isinstance(v, int) or v < 1 for v in levels):
        raise ConfigError(
            f"data.levels={levels!r}: give at least 2 step counts >= 1, e.g. data.levels=1,2,3,4"
        )
    need = 2 * max(levels) + 3
    if d["answer_len"] < need:
        raise ConfigError(
            f"data.answer_len={d['answer_len']} is too short for {max(levels)} steps; set it to >= {need}"
        )
    config.check_positive(
        cfg,
        ["data.n_train", "data.n_val", "data.n_eval", "data.prompt_len", "base.batch_size", "base.lr"]
        + ["post.rounds", "post.iterations", "post.batch_size", "seeds"],
    )
    config.check_nonnegative(cfg, ["base.steps"])
    if not 0 <= d["idk_fraction"] < 1:
        raise ConfigError(f"data.idk_fraction={d['idk_fraction']!r} must be in [0, 1)")
    if not 0 <= cfg["curriculum"]["lam"] <= 1:
        raise ConfigError(f"curriculum.lam={cfg['curriculum']['lam']!r} must be in [0, 1]")
    for name in ("grpo", "auto_cei"):
        _, o = method_settings(cfg, name)
        if o["max_new_tokens"] != d["answer_len"]:
            raise ConfigError(
                f"{name}.max_new_tokens={o['max_new_tokens']} must equal data.answer_len={d['answer_len']}"
            )


# -- data and environments ----------------------------------------------------------------------


def idk_trace(trace: str, k: int) -> str:
    """The chain answer ``trace`` stopped after ``k`` steps, answering IDK."""
    steps = trace.split(A.MARK)[0].split(A.SEP)[:-1]
    return "".join(s + A.SEP for s in steps[:k]) + A.MARK + A.IDK


def build_data(d: dict, tok, seed: int) -> dict:
    """Stacked arrays, level axis first: ``sft`` (worked answers), ``sft_mix`` (the base mix, a
    ``idk_fraction`` of rows answering IDK), ``rl`` / ``val`` / ``eval`` prompts with the final
    answer (the digit after the marker)."""
    P, C = d["prompt_len"], d["answer_len"]
    rng = np.random.default_rng([seed, 0xCE1])
    out = {"sft": [], "sft_mix": [], "rl": [], "val": [], "eval": []}
    for lv in d["levels"]:
        train = tasks.generate("chain", d["n_train"], seed=seed, digits=lv)
        mix = [
            (q, idk_trace(a, int(rng.integers(0, lv + 1))) if rng.random() < d["idk_fraction"] else a)
            for q, a in train
        ]
        final = lambda pairs: [(q, a.split(A.MARK)[-1]) for q, a in pairs]  # noqa: E731
        out["sft"].append(tasks.encode_sft(tok, train, prompt_len=P, completion_len=C))
        out["sft_mix"].append(tasks.encode_sft(tok, mix, prompt_len=P, completion_len=C))
        for k, s, n in (
            ("rl", seed, d["n_train"]),
            ("val", seed + 20_000, d["n_val"]),
            ("eval", seed + 10_000, d["n_eval"]),
        ):
            pairs = train if k == "rl" else tasks.generate("chain", n, seed=s, digits=lv)
            out[k].append(tasks.encode_prompts(tok, final(pairs), prompt_len=P, answer_width=C))
    return {k: {f: np.stack([r[f] for r in v]) for f in v[0]} for k, v in out.items()}


def envs(tok, fixed_idk: float):
    """``(correct, fixed)``: the exact final answer after the marker (1/0), and GRPO's reward with a
    fixed IDK reward (1 correct, ``fixed_idk`` IDK, 0 wrong)."""
    table, length = tasks.token_bytes(tok)
    T = A.byte_tokens()

    def correct(comp, mask, rows):
        _, _, answer, idk = A.parse(comp, mask, sep_id=T.sep, mark_id=T.mark, idk_id=T.idk)
        r = tasks.exact_reward(comp, answer, rows["answer"], rows["answer_len"], table, length)
        return r, idk

    def reward(comp, mask, rows):
        return correct(comp, mask, rows)[0]

    def fixed(comp, mask, rows):
        r, idk = correct(comp, mask, rows)
        return jnp.where(idk, fixed_idk, r)

    eos, pad = int(tok.eos_id), int(tok.pad_id)
    return grpo.Env(reward, eos, pad), grpo.Env(fixed, eos, pad), correct


def draw(arrays, key, n):
    """``n`` rows (prompts or SFT rows) of random levels."""
    L, N = next(iter(arrays.values())).shape[:2]
    kl, ki = jax.random.split(key)
    lv, i = jax.random.randint(kl, (n,), 0, L), jax.random.randint(ki, (n,), 0, N)
    return {k: v[lv, i] for k, v in arrays.items()}


# -- the programs -------------------------------------------------------------------------------


class Programs:
    """The model, data and compiled programs of one run."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        d = cfg["data"]
        self.model, _, self.tok = lm.load(
            cfg["model"],
            max_seq_len=d["prompt_len"] + d["answer_len"],
            tokenizer=hf.ByteTokenizer(),
            padded=True,
        )
        self.data = jax.device_put(jax.tree.map(jnp.asarray, build_data(d, self.tok, cfg["seed"])))
        self.env, self.env_fixed, self.correct = envs(self.tok, float(d["idk_fixed_reward"]))
        self.L = len(d["levels"])

    def answers(self, params, prompts):
        """Greedy answers to every level's prompts: ``(correct_LxN, idk_LxN, steps_LxN)``."""
        C, T = self.cfg["data"]["answer_len"], A.byte_tokens()

        def one(ev):
            comp = generate_ids(
                params, ev["prompt"], ev["prompt_valid"], jax.random.key(0), cfg=self.model.cfg,
                max_new_tokens=C, cache_len=ev["prompt"].shape[1] + C, sampling=Sampling(),
                eos_id=self.env.eos_id, pad_id=self.env.pad_id,
            )  # fmt: skip
            _, before = grpo.end_mask(comp, self.env.eos_id)
            r, idk = self.correct(comp, before, ev)
            steps = A.parse(comp, before, sep_id=T.sep, mark_id=T.mark, idk_id=T.idk)[0]
            return (r >= 1.0) & ~idk, idk, steps

        return jax.lax.map(one, prompts)

    def base(self, key, data):
        """Base SFT on the mix, then the test and validation answers and the curriculum's start."""
        b = self.cfg["base"]
        spec = get_method("finetune")
        _, opts = spec.split({"clip_norm": 1.0, "warmup_cosine_steps": max(b["steps"], 1)})
        method = build_method(spec, self.model, as_hparams(spec, {"lr": b["lr"]}), opts)
        k_init, k_run = jax.random.split(key)
        state = method_state(method, self.model.init(k_init), k_run)
        if b["steps"]:
            step = method_step(method, name="finetune")
            rows = lambda k: draw(data["sft_mix"], k, b["batch_size"])  # noqa: E731
            state, _ = run_chunks(step, state, rows, lambda p: {}, 1, b["steps"])
        params = state.params
        c, i, _ = self.answers(params, data["eval"])
        _, vi, vs = self.answers(params, data["val"])
        cur = A.curriculum_init(vs.reshape(-1), vi.reshape(-1))
        return {
            "params": params,
            "stats": A.answer_stats(c, i),
            "cur": cur,
            "nonfinite_step": state.nonfinite_step,
        }

    def row_method(self, row: str):
        """``(spec, hp values, options)`` of a row."""
        if row == "sft":
            hp, opts = method_settings(self.cfg, "finetune")
            return get_method("finetune"), hp, opts
        if row == "grpo-idk":
            hp, opts = method_settings(self.cfg, "grpo")
            return get_method("grpo"), hp, opts
        hp, opts = method_settings(self.cfg, "auto_cei")
        return get_method("auto_cei"), hp, {**opts, "steer": row == "auto-cei"}

    def row(self, row: str, params, key, data, hp, cur):
        """Every round of one row: ``{round metrics: (rounds, ...)}``."""
        spec, _, opts = self.row_method(row)
        p = self.cfg["post"]
        curriculum = row == "auto-cei"
        rl = spec.kind == "rl"
        env = self.env_fixed if row == "grpo-idk" else self.env

        def method_of(cur):
            h = {**hp, "c1": cur.c1, "c2": cur.c2} if curriculum else hp
            return build_method(spec, self.model, h, opts)

        method = method_of(cur)
        example = None
        if rl:
            prompts = draw(data["rl"], key, p["batch_size"])
            example = grpo.example_batch(
                prompts,
                group_size=opts["group_size"],
                max_new_tokens=opts["max_new_tokens"],
                pad_id=env.pad_id,
            )
        state = method_state(method, params, jax.random.fold_in(key, POST), example)
        if rl:
            state = method.consolidate(state, None, None)  # the KL reference (grpo): the base model
        n_rows = p["batch_size"] * self.cfg["auto_cei"]["group_size"]

        def one_round(carry, _):
            state, cur = carry
            prev = state  # the best round's state so far (auto-cei: a rejected round restarts from it)
            m = method_of(cur)
            if rl:
                step = grpo.make_iteration(m, env)
                batches = lambda k: draw(data["rl"], k, p["batch_size"])  # noqa: E731
            else:
                step = method_step(m, name=row)
                batches = lambda k: draw(data["sft"], k, n_rows)  # noqa: E731
            state, tr = run_chunks(step, state, batches, lambda q: {}, 1, p["iterations"])
            c, i, _ = self.answers(state.params, data["eval"])
            out = {**{k: v[0] for k, v in tr.items()}, **A.answer_stats(c, i), "c1": cur.c1}
            if curriculum:  # the hill climb: keep the best round's state, restart a rejected round from it
                vc, vi, _ = self.answers(state.params, data["val"])
                v = A.answer_stats(vc, vi)
                f = A.objective(v["precision"], v["refusal"], self.cfg["curriculum"]["lam"])
                out.update(f_val=f, active=(~cur.done).astype(jnp.float32))
                cur, accepted = A.curriculum_update(cur, f)
                out["accepted"] = accepted.astype(jnp.float32)
                state = A.restart(state, prev, accepted)
            return (state, cur), out

        (state, cur), trace = jax.lax.scan(one_round, (state, cur), None, length=p["rounds"])
        final = {}
        if curriculum:  # the result is the best round's model (the authors keep the best iteration)
            c, i, _ = self.answers(state.params, data["eval"])
            final = {f"final_{k}": v for k, v in A.answer_stats(c, i).items()}
            final["final_c1"] = cur.best_c1
        return {**trace, **final, "nonfinite_step": state.nonfinite_step}


def seed_metrics(stats: dict, L: int) -> dict:
    """Per-seed row values from answer statistics (``{key: (S, ...)}``) of the last round."""
    ref = np.asarray(stats["refusal_L"])
    h = L // 2
    out = {k: np.asarray(stats[k]).tolist() for k in ("acc", "precision", "refusal")}
    out["refusal_gap"] = (ref[:, L - h :].mean(-1) - ref[:, :h].mean(-1)).tolist()
    for k in ("acc_L", "precision_L", "refusal_L"):
        for j in range(L):
            out[f"{k[:-2]}_{j}"] = np.asarray(stats[k])[:, j].tolist()
    return out


def body(cfg: dict, run: Run) -> Report:
    progs = Programs(cfg)
    S, L = cfg["seeds"], progs.L
    keys = seeds_keys(cfg["seed"], S)
    timing = {}
    t0 = time.perf_counter()
    run.say(f"base SFT: {cfg['base']['steps']} steps on the mix ({S} seeds)...")
    base_fn = jit_seeds(lambda k, d: progs.base(jax.random.fold_in(k, BASE), d), (0, None))
    base = base_fn(keys, progs.data)
    check_finite(np.asarray(base["nonfinite_step"]), where="(base SFT)")
    timing["base"] = time.perf_counter() - t0
    per = seed_metrics(jax.tree.map(np.asarray, base["stats"]), L)
    rows = {"base": results.row({**per, "time_s": [timing["base"]]})}
    with run.progress(len(cfg["rows"]), "row") as bar:
        for row in cfg["rows"]:
            bar.set_postfix_str(f"{row} x {S} seeds")
            spec, hp, _ = progs.row_method(row)
            t1 = time.perf_counter()
            fn = jit_seeds(
                lambda p, k, d, h, c, row=row: progs.row(row, p, k, d, h, c), (0, 0, None, None, 0)
            )
            tr = jax.tree.map(
                np.asarray, fn(base["params"], keys, progs.data, as_hparams(spec, hp), base["cur"])
            )
            check_finite(tr.pop("nonfinite_step"), where=f"(row {row})")
            timing[row] = time.perf_counter() - t1
            final = {k[len("final_") :]: tr.pop(k) for k in [k for k in tr if k.startswith("final_")]}
            last = final or {k: v[:, -1] for k, v in tr.items()}  # auto-cei: its best round's model
            per = {**seed_metrics(last, L), "time_s": [timing[row]]}
            if final:  # the c1 of the best round (auto-cei)
                per["best_c1"] = np.asarray(final["c1"]).tolist()
            curves = {f"{k}_trace_mean": v.mean(0).tolist() for k, v in tr.items() if v.ndim >= 2}
            rows[row] = results.row(per, **curves)
            bar.update(1)
    res = results.make(
        "auto-cei",
        cfg,
        rows,
        COLUMNS,
        timing=timing,
        extra={
            "levels": list(cfg["data"]["levels"]),
            "c1_start_per_seed": np.asarray(base["cur"].c1).tolist(),
            "c2_per_seed": np.asarray(base["cur"].c2).tolist(),
        },
        first="row",
    )
    # the per-level columns (not in the printed table): their format, for the docs' tables
    res["columns"] += [
        [f"{k}_{j}", f"{k} at {lv} steps", "pct"]
        for k in ("acc", "precision", "refusal")
        for j, lv in enumerate(cfg["data"]["levels"])
    ]
    header = (
        f"\n{cfg['name']}: chain task at {', '.join(map(str, cfg['data']['levels']))} steps; {S} seeds, "
        f"{cfg['post']['rounds']} rounds x {cfg['post']['iterations']} iterations per row; in %, mean ± std "
        "(precision = correct / answered; refusal gap = refusal on the harder half of the levels minus the easier)\n"
    )
    return Report(res, header, every=cfg["post"]["iterations"], axis="level")


STUDY = driver.Study(
    "auto-cei",
    kinds=("rl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    methods=("finetune", "grpo", "auto_cei"),
    takes_mesh=False,
    no_resume="its rows are one program each; run it again",
)
run, sweep = STUDY.run, STUDY.sweep
