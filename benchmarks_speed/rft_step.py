"""Speed: one GRPO iteration (rollout of B prompts x G completions of L tokens, rewards, mu
updates with a KL penalty) in jaxcl vs TRL's ``GRPOTrainer``, and rollout tokens/s vs
transformers' ``generate``, on the same random Llama (byte-sized vocabulary, 272 tokens).

* **jaxcl**: the registry's ``grpo`` (k3 KL, beta 0.04, clip 0.2, Adam) through
  ``jaxcl.grpo.make_iteration``; ``--iters`` iterations per call under one jitted ``lax.scan``
  (``jaxcl.loops.run_chunks``), as the rft-continual study runs them; rewards in JAX.
* **trl**: ``trl.GRPOTrainer`` on transformers' ``LlamaForCausalLM`` with the same config and
  weights, saved to and loaded from a folder (TRL builds its reference model from it), its
  defaults otherwise (``per_device_train_batch_size = B*G``, ``num_generations = G``,
  ``num_iterations = mu``, same beta, lr, temperature 1, ``max_completion_length = L``), a Python
  reward function; time per iteration = time of ``mu`` trainer steps (a callback times each).
* **generate**: ``jaxcl.generate.generate`` vs ``model.generate(do_sample=True,
  min_new_tokens=L)`` for the B*G rows: rollout tokens/s.

FLOPs per iteration (reported as achieved GFLOP/s against a measured float32 matmul peak):
``N*T*f`` for each of the rollout, the reference log-probs and (``mu > 1`` only) the sampling
log-probs, and ``3*N*T*f`` per update, with ``N = B*G``, ``T = P + L``, ``f = 2 * (params in matmuls) + 4 * layers
* T * d`` per token. Shapes: ``small`` (4 layers, d 256, B 4, G 8, L 16) and ``medium`` (4 layers,
d 512, B 8, G 8, L 32); ``--layers/--d-model/--batch/--group/--new`` for GPU sizes.

    python benchmarks_speed/rft_step.py --shape small
    python benchmarks_speed/rft_step.py --shape medium
    python benchmarks_speed/rft_step.py --tiny --out /tmp/rft.jsonl    # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {
    "small": dict(layers=4, d_model=256, batch=4, group=8, new=16),
    "medium": dict(layers=4, d_model=512, batch=8, group=8, new=32),
    "tiny": dict(layers=1, d_model=64, batch=2, group=2, new=4),
}
PROMPT = 16


def llama_cfg(a):
    from jaxcl.models import llama

    heads = max(a.d_model // 64, 1)
    return llama.LlamaConfig(
        vocab_size=272,
        d_model=a.d_model,
        n_layers=a.layers,
        n_heads=heads,
        n_kv_heads=max(heads // 2, 1),
        d_ff=int(a.d_model * 8 / 3) // 32 * 32,
        max_seq_len=PROMPT + a.new,
    )


def flops_per_iteration(cfg, a):
    D, F, L, V, hd = cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.vocab_size, cfg.hd
    T = PROMPT + a.new
    mat = L * (D * cfg.n_heads * hd * 2 + D * cfg.n_kv_heads * hd * 2 + 3 * D * F) + D * V
    f = 2 * mat + 4 * L * T * D
    N = a.batch * a.group
    return N * T * f * (2 + (a.mu > 1) + 3 * a.mu)


def matmul_peak():
    import jax
    import jax.numpy as jnp

    n = 1024
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(x).block_until_ready()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        f(x).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / min(ts)


def prompts_np(a, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(48, 58, (a.batch, PROMPT)).astype(np.int32)  # digit bytes


class Jaxcl:
    name = "jaxcl"

    def __init__(self, cfg, params, a):
        import jax
        import jax.numpy as jnp

        from jaxcl import grpo
        from jaxcl.engine import init_state
        from jaxcl.loops import as_hparams, build_method, run_chunks
        from jaxcl.methods import get_method
        from jaxcl.models.lm import language_model

        self.jax = jax
        spec = get_method("grpo")
        hp = as_hparams(spec, {"lr": a.lr, "beta": a.beta})
        _, opts = spec.split({"group_size": a.group, "max_new_tokens": a.new, "mu": a.mu})
        model = language_model(cfg, "bench", padded=True)
        method = build_method(spec, model, hp, opts)
        # reward: the fraction of digit bytes (dense; computed in JAX)
        env = grpo.Env(lambda c, m, r: ((c >= 48) & (c < 58) & m).mean(-1).astype(jnp.float32), 258, 256)
        prompts = {
            "prompt": jnp.asarray(prompts_np(a)),
            "prompt_valid": jnp.ones((a.batch, PROMPT), bool),
        }
        ex = grpo.example_batch(prompts, group_size=a.group, max_new_tokens=a.new, pad_id=256)
        state = init_state(params, method.tx, jax.random.key(0), method.data, ex)
        self.state = method.consolidate(state, ex, None)
        it = grpo.make_iteration(method, env)

        @jax.jit
        def run(state):
            return run_chunks(it, state, lambda k: prompts, lambda p: {}, 1, a.iters)

        self.run = run

    def __call__(self):
        self.state, m = self.run(self.state)
        self.jax.block_until_ready(self.state.params)
        return float(m["reward"][-1])


def byte_tokenizer_dir(path):
    """A transformers tokenizer whose ids are the byte values (as jaxcl's ByteTokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i) if 33 <= i < 127 else f"<0x{i:02X}>": i for i in range(256)}
    vocab[" "] = 32
    vocab.update({"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.padding_side = "left"
    fast.save_pretrained(path)
    return fast


class Trl:
    name = "trl"

    def __init__(self, cfg, params, a, folder):
        import torch
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from jaxcl import hf

        self.torch, self.a = torch, a
        hf.save_hf(folder, cfg, params)
        tok = byte_tokenizer_dir(folder)
        text = ["".join(map(chr, row)) for row in prompts_np(a)]
        ds = Dataset.from_list([{"prompt": t} for t in text] * 10_000)

        def reward(completions, **kw):
            return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

        times = self.times = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter() - self.t)

        want = dict(
            output_dir=os.path.join(folder, "out"),
            per_device_train_batch_size=a.batch * a.group,
            num_generations=a.group,
            max_completion_length=a.new,
            max_prompt_length=PROMPT,
            num_iterations=a.mu,
            beta=a.beta,
            learning_rate=a.lr,
            temperature=1.0,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            report_to="none",
            logging_steps=10**6,
            save_strategy="no",
            max_steps=10**6,
            seed=0,
            disable_tqdm=True,
        )
        names = {f.name for f in dataclasses.fields(GRPOConfig)}
        self.dropped = sorted(k for k in want if k not in names)
        args = GRPOConfig(**{k: v for k, v in want.items() if k in names})
        self.trainer = GRPOTrainer(
            model=folder,
            reward_funcs=reward,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[Timer()],
        )

    def steps(self, n_iters):
        """Time of ``n_iters`` iterations (``mu`` trainer steps each), run as one ``train`` call."""
        self.trainer.args.max_steps = n_iters * self.a.mu
        self.times.clear()
        self.trainer.train()
        return list(self.times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    for k in ("layers", "d_model", "batch", "group", "new"):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=None)
    p.add_argument("--mu", type=int, default=1)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--iters", type=int, default=4, help="iterations per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--no-trl", action="store_true", help="jaxcl and generate only")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rft_step_cpu.jsonl"))
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    if a.tiny:
        a.shape, a.iters, a.repeats = "tiny", 1, 1
    for k, v in SHAPES[a.shape].items():
        if getattr(a, k) is None:
            setattr(a, k, v)

    import jax
    import torch

    from jaxcl import generate, report
    from jaxcl.models import llama

    torch.set_num_threads(os.cpu_count())
    cfg = llama_cfg(a)
    params = llama.init_params(cfg, seed=0)
    load0 = os.getloadavg()[0]
    rec = {
        "workload": "rft_step",
        "shape": a.shape,
        "sizes": {k: getattr(a, k) for k in ("layers", "d_model", "batch", "group", "new", "mu", "iters")}
        | {"prompt": PROMPT, "vocab": 272, "tiny": a.tiny},
        "versions": {**report.versions(), "torch": torch.__version__},
        "device": report.device_info(),
        "git_commit": report.git_commit(),
        "note": a.note,
    }
    flops = flops_per_iteration(cfg, a)
    peak = matmul_peak()
    rec["flops_per_iteration"], rec["matmul_peak_gflops"] = flops, peak / 1e9

    t = time.perf_counter()
    jx = Jaxcl(cfg, params, a)
    jx()
    rec["jaxcl_first_call_s"] = time.perf_counter() - t
    sides = {"jaxcl": []}
    trl = None
    if not a.no_trl:
        try:
            folder = tempfile.mkdtemp(prefix="rft_bench_")
            t = time.perf_counter()
            trl = Trl(cfg, params, a, folder)
            first = trl.steps(1)
            rec["trl_first_iteration_s"] = time.perf_counter() - t
            rec["trl_first_step_s"] = first
            rec["trl_config_not_supported"] = trl.dropped
            sides["trl"] = []
        except Exception as e:  # noqa: BLE001  (reported, not hidden)
            rec["trl_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            trl = None
    for _ in range(a.repeats):  # interleaved
        t = time.perf_counter()
        jx()
        sides["jaxcl"].append((time.perf_counter() - t) / a.iters)
        if trl is not None:
            ts = trl.steps(a.iters)
            sides["trl"].append(sum(ts) / a.iters)
    for k, ts in sides.items():
        med = statistics.median(ts)
        rec[k] = {
            "median_s_per_iteration": med,
            "min_s": min(ts),
            "max_s": max(ts),
            "gflops": flops / med / 1e9,
            "fraction_of_matmul_peak": flops / med / peak,
        }
    if trl is not None:
        rec["ratio_trl_over_jaxcl"] = (
            rec["trl"]["median_s_per_iteration"] / rec["jaxcl"]["median_s_per_iteration"]
        )

    # rollout tokens/s: jaxcl generate vs transformers generate (sampled, B*G rows, L new tokens)
    from jaxcl import hf

    rows = np.repeat(prompts_np(a), a.group, axis=0)
    gen = lambda: np.asarray(
        generate.generate(cfg, params, rows, max_new_tokens=a.new, temperature=1.0, key=jax.random.key(0))
    )
    tm = hf.to_torch_llama(cfg, params).eval()
    ids = torch.as_tensor(rows, dtype=torch.long)

    def tgen():
        with torch.inference_mode():
            return tm.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                max_new_tokens=a.new,
                min_new_tokens=a.new,
                pad_token_id=256,
            )

    gen(), tgen()
    g = {"jaxcl": [], "transformers": []}
    for _ in range(a.repeats):
        for name, fn in (("jaxcl", gen), ("transformers", tgen)):
            t = time.perf_counter()
            fn()
            g[name].append(time.perf_counter() - t)
    n_tok = rows.shape[0] * a.new
    rec["rollout_tokens_per_s"] = {k: n_tok / statistics.median(v) for k, v in g.items()}
    rec["rollout_ratio"] = rec["rollout_tokens_per_s"]["jaxcl"] / rec["rollout_tokens_per_s"]["transformers"]
    rec["loadavg"] = [load0, os.getloadavg()[0]]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    j = rec["jaxcl"]
    print(
        f"rft_step {a.shape}: jaxcl {j['median_s_per_iteration'] * 1e3:.1f} ms/iteration "
        f"({j['gflops']:.2f} GFLOP/s, {100 * j['fraction_of_matmul_peak']:.1f}% of the matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s), first call {rec['jaxcl_first_call_s']:.1f} s"
    )
    if trl is not None:
        t_ = rec["trl"]
        print(
            f"  trl {t_['median_s_per_iteration'] * 1e3:.1f} ms/iteration ({t_['gflops']:.2f} GFLOP/s); "
            f"ratio trl/jaxcl = {rec['ratio_trl_over_jaxcl']:.2f}x"
        )
    elif "trl_error" in rec:
        print("  trl failed:", rec["trl_error"])
    print(
        f"  rollout tokens/s: jaxcl {rec['rollout_tokens_per_s']['jaxcl']:.0f}, transformers "
        f"{rec['rollout_tokens_per_s']['transformers']:.0f} (ratio {rec['rollout_ratio']:.2f}x)"
    )
    return rec


if __name__ == "__main__":
    main()
