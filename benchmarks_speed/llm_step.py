"""Speed: a Llama (SmolLM2 shape) training step and KV-cache generation, jaxcl vs transformers.

Workloads (same weights, same shapes, one process, sides interleaved):

* ``llm_train_step``: causal-LM cross-entropy + AdamW on a random token batch (B x T).
  - jaxcl: ``jaxcl.models.llama`` + ``jaxcl.engine.make_step``, ``--steps`` steps per call in
    one jitted ``lax.scan`` (the way jaxcl runs training).
  - torch-eager: transformers ``LlamaForCausalLM`` (SDPA attention), ``torch.optim.AdamW``
    (fused where available, else foreach), ``model(ids, labels=ids).loss.backward()`` per step;
    bf16 via ``torch.autocast(device_type, dtype=torch.bfloat16)`` when ``--dtype bfloat16``
    (fp32 weights and AdamW state, as jaxcl's ``compute_dtype="bfloat16"``).
  - torch-compile (``--compile``): the same with the model under ``torch.compile``.
* ``llm_generate``: greedy decoding of ``--new`` tokens for B prompts of ``--prompt`` tokens.
  - jaxcl: ``jaxcl.generate.generate`` (prefill + ``lax.scan`` decode with the KV cache).
  - torch: transformers ``model.generate(do_sample=False, min_new_tokens=max_new_tokens)``.

Metrics are tokens/s (train: B*T*steps per call; generate: B*new per call); ratio =
jaxcl tokens/s / torch tokens/s (> 1: jaxcl is faster), against jaxcl in the same dtype.
``--dtype float32 bfloat16`` builds both dtypes' sides in one process and interleaves all of them
(the bf16 sides are named ``<side>-bf16``); every line records the 1-minute load average before
and after the timed repeats, and on the CPU the model FLOP/s beside the matmul peaks measured in
the same run (float32, and bfloat16 inputs with float32 accumulation). On a GPU also MFU against a measured
8192^3 bf16 matmul, with model FLOPs = 6 * non-embedding params * tokens + 12 * L * T * d *
tokens (+ 6 * d * V * tokens for the output projection).

    python benchmarks_speed/llm_step.py                     # CPU default: 4 SmolLM2 layers, B 4, T 256
    python benchmarks_speed/llm_step.py --dtype float32 bfloat16 --no-generate --no-variants  # fp32 vs bf16
    python benchmarks_speed/llm_step.py --layers 30 --batch 16 --seq 1024 --dtype bfloat16 --compile  # GPU
    python benchmarks_speed/llm_step.py --tiny --out /tmp/x.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

# OpenMP's default spin-waiting makes 2-thread PyTorch erratic on a shared CPU (see
# benchmarks_speed/README.md); passive waiting only ever helps the PyTorch side.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stats(ts):
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "max_s": max(ts),
        "times_s": [round(t, 4) for t in ts],
    }


def meta():
    import torch

    from jaxcl import report

    isa = []  # bf16 speed on a CPU depends on these (AVX2 alone has no bf16 dot instructions)
    if os.path.exists("/proc/cpuinfo"):
        flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
        isa = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return {
        "versions": {**report.versions(), "torch": torch.__version__},
        "device": {**report.device_info(), "torch_threads": torch.get_num_threads(), "cpu_isa": isa},
        "git_commit": report.git_commit(),
    }


def model_flops_per_token(cfg, T):
    D, F, L, V, hd = cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.vocab_size, cfg.hd
    per_layer = D * (cfg.n_heads * hd) * 2 + D * (cfg.n_kv_heads * hd) * 2 + 3 * D * F
    return 6 * (L * per_layer + D * V) + 12 * L * T * D


def matmul_peak_flops():
    import jax
    import jax.numpy as jnp

    n = 8192
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / min(ts)


class JaxTrain:
    name = "jaxcl"

    def __init__(self, cfg, params, tokens, steps, lr, loss=None, norms=False):
        import jax
        import jax.numpy as jnp
        import optax

        from jaxcl import engine
        from jaxcl.models import llama

        self.jax = jax
        tx = optax.adamw(lr)

        def loss_fn(p, batch, key):
            if loss is not None:
                return loss(p, batch), {}
            lp = llama.token_logprobs(cfg, p, batch)
            return -lp.mean(), {}

        # norms=False as the LM study runs it (the grad/param norm metrics re-read every parameter)
        step = engine.make_step(loss_fn, tx, norms=norms)

        @functools.partial(jax.jit, donate_argnums=0)  # the state updated in place, as the studies do
        def run(state, toks_SxBxT):
            return jax.lax.scan(step, state, toks_SxBxT)

        self.run = run
        self.state = engine.init_state(jax.tree.map(jnp.array, params), tx, 0)  # own copy: donated
        self.toks = jnp.broadcast_to(jnp.asarray(tokens), (steps, *tokens.shape))

    def __call__(self):
        self.state, m = self.run(self.state, self.toks)
        self.jax.block_until_ready(self.state.params)
        return float(m["loss"][-1])


class JaxUnfusedHead(JaxTrain):
    """jaxcl before the fused head: the same step with ``log_softmax(logits)`` then a gather as
    the loss (what ``llama.token_logprobs`` computed until the fused target log-prob head)."""

    name = "jaxcl-unfused-head"

    def __init__(self, cfg, params, tokens, steps, lr):
        import jax

        from jaxcl.models import llama

        def loss(p, toks):
            logits = llama.forward(cfg, p, toks[:, :-1])
            lp = jax.nn.log_softmax(logits, axis=-1)
            return -jax.numpy.take_along_axis(lp, toks[:, 1:, None], axis=-1).mean()

        super().__init__(cfg, params, tokens, steps, lr, loss=loss)


class JaxWithNorms(JaxTrain):
    """jaxcl's step with ``make_step``'s default ``grad_norm`` / ``param_norm`` metrics."""

    name = "jaxcl-with-norms"

    def __init__(self, cfg, params, tokens, steps, lr):
        super().__init__(cfg, params, tokens, steps, lr, norms=True)


class JaxHandwritten:
    """The same model and update written by hand in plain jax.numpy: own forward (a Python loop
    over the layers, einsum attention with a causal mask), ``optax.softmax_cross_entropy_with_
    integer_labels``, ``optax.adamw``, the steps in one jitted ``lax.scan``; no jaxcl code."""

    name = "jax-handwritten"

    def __init__(self, cfg, params, tokens, steps, lr):
        import jax
        import jax.numpy as jnp
        import optax

        self.jax = jax
        H, K, hd, eps = cfg.n_heads, cfg.n_kv_heads, cfg.hd, cfg.norm_eps
        inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
        T = tokens.shape[1] - 1
        ang = np.arange(T, dtype=np.float32)[:, None] * inv
        cos = jnp.asarray(np.cos(np.concatenate([ang, ang], -1))[None, :, None])
        sin = jnp.asarray(np.sin(np.concatenate([ang, ang], -1))[None, :, None])
        causal = jnp.asarray(np.tril(np.ones((T, T), bool)))

        def norm(x, w):
            return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps) * w

        def rope(x):
            h = x.shape[-1] // 2
            return x * cos + jnp.concatenate([-x[..., h:], x[..., :h]], -1) * sin

        def loss(p, toks):
            inp, tgt = toks[:, :-1], toks[:, 1:]
            B = inp.shape[0]
            x = p["embed"][inp]
            for i in range(cfg.n_layers):
                w = {k: v[i] for k, v in p["layers"].items()}
                h = norm(x, w["attn_norm"])
                q = rope((h @ w["wq"]).reshape(B, T, H, hd))
                k = jnp.repeat(rope((h @ w["wk"]).reshape(B, T, K, hd)), H // K, axis=2)
                v = jnp.repeat((h @ w["wv"]).reshape(B, T, K, hd), H // K, axis=2)
                s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
                a = jax.nn.softmax(jnp.where(causal, s, -1e30), axis=-1)
                x = x + jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(B, T, H * hd) @ w["wo"]
                h = norm(x, w["mlp_norm"])
                x = x + (jax.nn.silu(h @ w["w_gate"]) * (h @ w["w_up"])) @ w["w_down"]
            logits = norm(x, p["final_norm"]) @ p["embed"].T
            return optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()

        tx = optax.adamw(lr)

        def step(carry, toks):
            p, o = carry
            l, g = jax.value_and_grad(loss)(p, toks)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), l

        self.run = jax.jit(lambda c, xs: jax.lax.scan(step, c, xs), donate_argnums=0)
        params = jax.tree.map(jnp.array, params)  # own copy: donated
        self.carry = (params, tx.init(params))
        self.toks = jnp.broadcast_to(jnp.asarray(tokens), (steps, *tokens.shape))

    def __call__(self):
        self.carry, losses = self.run(self.carry, self.toks)
        self.jax.block_until_ready(self.carry)
        return float(losses[-1])


class TorchTrain:
    def __init__(self, cfg, params, tokens, steps, lr, dtype, compile_):
        import torch

        from jaxcl import hf

        self.torch, self.steps = torch, steps
        self.name = "torch-compile" if compile_ else "torch-eager"
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = hf.to_torch_llama(cfg, params).to(dev).train()
        self.fwd = torch.compile(self.model) if compile_ else self.model
        try:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-4, fused=True)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
        self.ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=dev)
        self.amp = dtype == "bfloat16"
        self.dev = dev

    def __call__(self):
        torch = self.torch
        for _ in range(self.steps):
            with torch.autocast(self.dev, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.fwd(self.ids, labels=self.ids).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.dev == "cuda":
            torch.cuda.synchronize()
        return loss.item()


class JaxGen:
    name = "jaxcl"

    def __init__(self, cfg, params, prompts, new):
        from jaxcl import generate

        self.f = lambda: np.asarray(
            generate.generate(cfg, params, prompts, max_new_tokens=new, pad_multiple=1)
        )

    def __call__(self):
        return self.f()


class TorchGen:
    name = "transformers-generate"

    def __init__(self, cfg, params, prompts, new, dtype):
        import torch

        from jaxcl import hf

        self.torch = torch
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.model = hf.to_torch_llama(cfg, params, dtype=tdt).to(self.dev).eval()
        self.ids = torch.as_tensor(np.asarray(prompts), dtype=torch.long, device=self.dev)
        self.new = new

    def __call__(self):
        torch = self.torch
        with torch.inference_mode():
            out = self.model.generate(
                self.ids,
                attention_mask=torch.ones_like(self.ids),
                do_sample=False,
                max_new_tokens=self.new,
                min_new_tokens=self.new,
                pad_token_id=0,
            )
        if self.dev == "cuda":
            torch.cuda.synchronize()
        return out[:, self.ids.shape[1] :].cpu().numpy()


def bench(sides, repeats, log, values=None):
    first = {}
    for s in sides:
        t = time.perf_counter()
        v = s()
        first[s.name] = time.perf_counter() - t
        if values is not None:
            values[s.name] = v
        log(
            f"  first call {s.name}: {first[s.name]:.2f}s" + (f", loss {v:.5f}" if values is not None else "")
        )
    times = {s.name: [] for s in sides}
    for r in range(repeats):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        for s in order:
            t = time.perf_counter()
            s()
            times[s.name].append(time.perf_counter() - t)
    return first, {k: stats(v) for k, v in times.items()}


def cpu_matmul_peaks(shapes):
    """GFLOP/s of jitted matmuls on this device, measured now: float32, and bfloat16 inputs with
    float32 accumulation (``preferred_element_type``, what ``compute_dtype="bfloat16"`` runs);
    the best over ``shapes`` (``(M, K, N)``) per dtype, and each shape's figure."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    out = {"float32": 0.0, "bfloat16": 0.0, "by_shape": {}}
    for m, k, n in shapes:
        for dt in ("float32", "bfloat16"):
            a = jax.random.normal(jax.random.key(0), (m, k)).astype(dt)
            b = jax.random.normal(jax.random.key(1), (k, n)).astype(dt)
            f(a, b).block_until_ready()
            ts = []
            for _ in range(5):
                t = time.perf_counter()
                f(a, b).block_until_ready()
                ts.append(time.perf_counter() - t)
            g = 2 * m * k * n / min(ts) / 1e9
            out["by_shape"][f"{m}x{k}x{n} {dt}"] = round(g, 1)
            out[dt] = max(out[dt], round(g, 1))
    return out


SUFFIX = {"float32": "", "bfloat16": "-bf16"}


def append_rows(out, rows, log) -> None:
    """Append ``rows`` as JSON lines to ``out`` (nothing when ``out`` is empty) and say so."""
    if not out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    log(f"appended {len(rows)} rows to {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4, help="SmolLM2-135M has 30")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    p.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16"],
        help="compute dtype(s); several: every dtype's sides in one process, interleaved",
    )
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="add a torch.compile row (training)")
    p.add_argument("--no-generate", action="store_true")
    p.add_argument("--no-torch", action="store_true", help="jaxcl sides only (no PyTorch / transformers)")
    p.add_argument(
        "--no-variants",
        action="store_true",
        help="skip the hand-written JAX step, jaxcl with the norm metrics and its former (unfused) head",
    )
    p.add_argument("--tiny", action="store_true", help="tiny model, for a quick check")
    p.add_argument("--note", default=None, help="a note stored in every row (the load, what changed)")
    p.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "llm_step_cpu.jsonl"),
    )
    a = p.parse_args(argv)
    dtypes = list(dict.fromkeys(a.dtype))

    import jax
    import torch

    from jaxcl.models import llama

    base = llama.tiny(vocab_size=512) if a.tiny else llama.smollm2_135m(n_layers=a.layers)
    cfgs = {dt: base.replace(compute_dtype=dt) for dt in dtypes}
    if a.tiny:
        a.batch, a.seq, a.steps, a.prompt, a.new, a.repeats = 2, 32, 2, 8, 4, 2
    params = llama.init_params(base, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, base.vocab_size, (a.batch, a.seq)).astype(np.int32)
    info = meta()
    on_gpu = jax.default_backend() == "gpu"
    peak = matmul_peak_flops() if on_gpu else None
    # the CPU's limit in this run: square matmuls and the step's largest shape (the tied head)
    cpu_peaks = (
        None
        if on_gpu
        else cpu_matmul_peaks(
            [(1024, 1024, 1024), (2048, 2048, 2048), (a.batch * (a.seq - 1), base.d_model, base.vocab_size)]
            if not a.tiny
            else [(64, 64, 64), (a.batch * (a.seq - 1), base.d_model, base.vocab_size)]
        )
    )
    log = lambda s: print(s, flush=True)
    log(
        f"[llm_step] {info['device']} torch {torch.__version__}; cfg layers {base.n_layers} d "
        f"{base.d_model} vocab {base.vocab_size}, B {a.batch} T {a.seq}, {' + '.join(dtypes)}"
        + (f"; CPU matmul GFLOP/s {cpu_peaks['by_shape']}" if cpu_peaks else "")
    )
    rows = []

    def named(side, dt):
        side.name += SUFFIX[dt]
        side.dtype = dt
        return side

    sides = []
    for dt in dtypes:
        cfg = cfgs[dt]
        sides.append(named(JaxTrain(cfg, params, tokens, a.steps, 1e-4), dt))
        if not a.no_variants and dt == "float32":  # the hand-written step has no bf16 casts
            sides += [
                named(JaxHandwritten(cfg, params, tokens, a.steps, 1e-4), dt),
                named(JaxWithNorms(cfg, params, tokens, a.steps, 1e-4), dt),
                named(JaxUnfusedHead(cfg, params, tokens, a.steps, 1e-4), dt),
            ]
        if not a.no_torch:
            sides.append(named(TorchTrain(cfg, params, tokens, a.steps, 1e-4, dt, False), dt))
        if a.compile and not a.no_torch:
            try:
                side = named(TorchTrain(cfg, params, tokens, a.steps, 1e-4, dt, True), dt)
                side()
                sides.append(side)
            except Exception as e:  # torch.compile may lack a compiler here
                log(f"  torch-compile unavailable: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    first_loss = {}
    load = [os.getloadavg()[0]]
    first, st = bench(sides, a.repeats, log, first_loss)
    load.append(os.getloadavg()[0])
    dtype_of = {s.name: s.dtype for s in sides}
    n_tok = a.batch * a.seq * a.steps
    fpt = model_flops_per_token(base, a.seq)
    for name, s in st.items():
        tps = n_tok / s["median_s"]
        dt = dtype_of[name]
        row = dict(
            workload="llm_train_step",
            side=name,
            layers=base.n_layers,
            d_model=base.d_model,
            vocab=base.vocab_size,
            batch=a.batch,
            seq=a.seq,
            steps_per_call=a.steps,
            dtype=dt,
            tokens_per_s=tps,
            first_call_s=first[name],
            loss_after_first_call=first_loss[name],  # same weights and tokens: equal within a dtype
            **s,
            ratio_jaxcl_over_this=(n_tok / st["jaxcl" + SUFFIX[dt]]["median_s"]) / tps,
            mfu=(tps * fpt / peak) if peak else None,
            model_gflops_per_s=tps * fpt / 1e9,  # 6 x params x tokens + attention (see docstring)
            cpu_matmul_peak_gflops=cpu_peaks,
            loadavg_1min=[round(v, 2) for v in load],
            **info,
        )
        if a.note:
            row["note"] = a.note
        rows.append(row)

    if not a.no_generate:
        prompts = rng.integers(0, base.vocab_size, (a.batch, a.prompt)).astype(np.int32)
        gsides = []
        for dt in dtypes:
            gsides.append(named(JaxGen(cfgs[dt], params, prompts, a.new), dt))
            if not a.no_torch:
                gsides.append(named(TorchGen(cfgs[dt], params, prompts, a.new, dt), dt))
        load = [os.getloadavg()[0]]
        first, st = bench(gsides, a.repeats, log)
        load.append(os.getloadavg()[0])
        same = {}
        if not a.no_torch:
            for dt in dtypes:
                j, t = (g for g in gsides if g.dtype == dt)
                same[dt] = float((j() == t()).mean())
        n_tok = a.batch * a.new
        for g in gsides:
            s, dt = st[g.name], g.dtype
            tps = n_tok / s["median_s"]
            rows.append(
                dict(
                    workload="llm_generate",
                    side=g.name,
                    layers=base.n_layers,
                    batch=a.batch,
                    prompt=a.prompt,
                    new=a.new,
                    dtype=dt,
                    tokens_per_s=tps,
                    first_call_s=first[g.name],
                    **s,
                    greedy_token_agreement=same.get(dt),
                    ratio_jaxcl_over_this=(n_tok / st["jaxcl" + SUFFIX[dt]]["median_s"]) / tps,
                    loadavg_1min=[round(v, 2) for v in load],
                    **info,
                )
            )

    # a bf16 side against the same side in float32, same process (> 1: bf16 is faster)
    by = {(r["workload"], r["side"]): r["tokens_per_s"] for r in rows}
    for r in rows:
        f32 = by.get((r["workload"], r["side"].removesuffix(SUFFIX["bfloat16"])))
        if r["dtype"] == "bfloat16" and f32:
            r["ratio_over_float32"] = r["tokens_per_s"] / f32
    log(
        f"{'workload':16s} {'side':26s} {'tokens/s':>10s} {'median s':>9s} {'first s':>8s} "
        f"{'jaxcl x':>8s} {'GFLOP/s':>8s}" + ("  MFU" if peak else "")
    )
    for r in rows:
        log(
            f"{r['workload']:16s} {r['side']:26s} {r['tokens_per_s']:10.1f} {r['median_s']:9.3f} "
            f"{r['first_call_s']:8.2f} {r['ratio_jaxcl_over_this']:8.2f} "
            f"{r.get('model_gflops_per_s') or 0:8.1f}"
            + (f"  bf16/fp32 {r['ratio_over_float32']:.2f}x" if "ratio_over_float32" in r else "")
            + (f"  {r['mfu']:.1%}" if peak and r.get("mfu") else "")
        )
    if cpu_peaks:
        log(
            f"CPU matmul peak in this run: float32 {cpu_peaks['float32']} GFLOP/s, bf16 {cpu_peaks['bfloat16']}"
        )
    log(f"1-minute load average: {load}")
    append_rows(a.out, rows, log)
    return rows


if __name__ == "__main__":
    main()
