"""Speed and memory: LoRA training of a Llama (SmolLM2 shape) against the full fine-tune, jaxcl vs
PyTorch + PEFT.

Four sides on the same weights, the same token batch and the same AdamW (lr 1e-4, weight decay
1e-4, optax's / torch's defaults otherwise), one process, interleaved repeats (the protocol of
``llm_step.py``, whose helpers this script imports):

* ``jaxcl-lora``: :mod:`jaxcl.models.lora` adapters (rank 8, alpha 16, on every linear of every
  layer: ``lora.LLAMA_ALL`` = wq, wk, wv, wo, w_gate, w_up, w_down; ``--targets default`` takes
  jaxcl's default, wq and wv), trained by ``jaxcl.engine.make_step`` on
  ``lora.wrap_loss(spec, loss, base)`` with the frozen base in ``TrainState.frozen``, a traced
  argument (as ``jaxcl.lmprogram.LMProgram`` runs a LoRA study); ``--steps`` steps per call in one
  jitted ``lax.scan``.
* ``jaxcl-full``: ``llm_step.JaxTrain``, the full fine-tune step of ``llm_step.py``.
* ``torch-peft-lora``: transformers ``LlamaForCausalLM`` + ``peft.get_peft_model`` with a
  ``LoraConfig`` of the same rank, alpha and targets (q/k/v/o_proj, gate/up/down_proj; no
  dropout), AdamW over the adapters only. Its A matrices are jaxcl's (transposed), so the two
  LoRA sides train the same adapters; B is zero on both.
* ``torch-full``: ``llm_step.TorchTrain``'s eager step (AdamW over every parameter).

B = 0 makes the LoRA model's first loss the base model's: all four sides report the loss of the
first step of their first call (``first_loss``; same weights and tokens, so equal up to float
error) and the loss after the first call (``loss_after_first_call``; the two LoRA sides agree).

Speed: steps/s and tokens/s (``B * T * steps`` per call), median/min/max of the timed repeats,
the first call (compilation included) apart. ``ratio_peer_over_jaxcl`` on the peer rows: peer
median / jaxcl median of the same mode (``torch-peft-lora`` / ``jaxcl-lora``,
``torch-full`` / ``jaxcl-full``; > 1: jaxcl is faster); ``lora_speedup_over_full``: full time /
LoRA time within one stack. GFLOP/s counts 6 x weights x tokens for the full step (as
``llm_step.model_flops_per_token``) and 4 x weights x tokens for LoRA (forward and input
gradients; no weight gradient of a frozen weight) plus the adapters' 6 x adapter params, beside
the CPU matmul peaks measured in the same run.

Memory, per side: trainable parameters, their optimizer-state bytes (AdamW's moments as
allocated), and

* jaxcl: the compiled call's ``memory_analysis()`` (temp, argument, output and alias bytes, and
  temp + argument + output); the state is donated, so the aliased outputs share the arguments'
  buffers;
* every side on the CPU: ``peak_rss_rise_bytes``, the resident set's rise during one untimed
  steady-state call after the timed repeats (``malloc_trim(0)`` first, so freed memory is given
  back; ``/proc/self/statm`` sampled every millisecond): the call's working set as the OS sees
  it, which PyTorch's CPU allocator has no statistics for. With PyTorch on CUDA the torch sides
  report ``torch.cuda.max_memory_allocated()`` over that call instead (``memory_measure`` names
  which).

    python benchmarks_speed/lora_step.py                 # CPU default: 4 SmolLM2 layers, B 4, T 256
    python benchmarks_speed/lora_step.py --targets default --rank 16 --alpha 32
    python benchmarks_speed/lora_step.py --tiny --out /tmp/x.jsonl
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import os
import sys
import threading
import time

# OpenMP's default spin-waiting makes 2-thread PyTorch erratic on a shared CPU (see llm_step.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm_step import JaxTrain, TorchTrain, append_rows, bench, cpu_matmul_peaks, meta, model_flops_per_token

# jaxcl's stacked Llama weights -> the transformers module names PEFT targets
HF_MODULE = {
    "layers/wq": "q_proj",
    "layers/wk": "k_proj",
    "layers/wv": "v_proj",
    "layers/wo": "o_proj",
    "layers/w_gate": "gate_proj",
    "layers/w_up": "up_proj",
    "layers/w_down": "down_proj",
}
LR = 1e-4
WEIGHT_DECAY = 1e-4  # optax.adamw's default; the torch sides pass it to torch.optim.AdamW


def nbytes(tree) -> int:
    import jax

    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


class JaxSide(JaxTrain):
    """``llm_step.JaxTrain`` (``spec=None``: the full fine-tune) or, with a LoRA ``spec``, the
    adapters ``adapters`` trained over the frozen ``params``; each call keeps its per-step losses."""

    def __init__(self, cfg, params, tokens, steps, lr, spec=None, adapters=None):
        import jax
        import jax.numpy as jnp
        import optax

        self.first_call_losses = None
        if spec is None:
            super().__init__(cfg, params, tokens, steps, lr)
            self.name = "jaxcl-full"
            return
        from jaxcl import engine
        from jaxcl.models import llama, lora

        self.jax, self.name = jax, "jaxcl-lora"
        tx = optax.adamw(lr, weight_decay=WEIGHT_DECAY)

        def loss_fn(p, batch, key):
            return -llama.token_logprobs(cfg, p, batch).mean(), {}

        @functools.partial(jax.jit, donate_argnums=0)
        def run(state, toks_SxBxT):
            # the base is the state's (a traced argument), never a constant of the program
            step = engine.make_step(lora.wrap_loss(spec, loss_fn, state.frozen), tx, norms=False)
            return jax.lax.scan(step, state, toks_SxBxT)

        self.run = run
        state = engine.init_state(jax.tree.map(jnp.array, adapters), tx, 0)
        self.state = state.replace(frozen=jax.tree.map(jnp.array, params))  # own copies: donated
        self.toks = jnp.broadcast_to(jnp.asarray(tokens), (steps, *tokens.shape))

    def __call__(self):
        self.state, m = self.run(self.state, self.toks)
        self.jax.block_until_ready(self.state.params)
        losses = [float(v) for v in np.asarray(m["loss"])]
        if self.first_call_losses is None:
            self.first_call_losses = losses
        return losses[0]

    def memory(self) -> dict:
        """Trainable parameters and optimizer-state bytes; the compiled call's memory analysis
        (an extra compilation, after the timed repeats)."""
        ma = self.run.lower(self.state, self.toks).compile().memory_analysis()
        out = {
            "trainable_params": int(sum(x.size for x in self.jax.tree.leaves(self.state.params))),
            "optimizer_state_bytes": nbytes(self.state.opt_state),
            "frozen_bytes": nbytes(self.state.frozen),
        }
        if ma is not None:
            xla = {
                k: int(getattr(ma, f"{k}_size_in_bytes"))
                for k in ("temp", "argument", "output", "alias", "generated_code")
            }
            xla["temp_argument_output"] = xla["temp"] + xla["argument"] + xla["output"]
            out["xla_memory_analysis_bytes"] = xla
        return out


class TorchSide(TorchTrain):
    """``llm_step.TorchTrain``'s eager step (``spec=None``: every parameter trained) or, with a
    LoRA ``spec``, PEFT's LoRA on the same targets with jaxcl's ``adapters`` copied in and AdamW
    over the adapters only; each call keeps its per-step losses."""

    def __init__(self, cfg, params, tokens, steps, lr, dtype, spec=None, adapters=None):
        super().__init__(cfg, params, tokens, steps, lr, dtype, False)
        torch = self.torch
        self.first_call_losses = None
        self.name = "torch-full"
        if spec is not None:
            import peft

            conf = peft.LoraConfig(
                r=spec.rank,
                lora_alpha=int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha,
                target_modules=[HF_MODULE[t] for t in spec.targets],
                lora_dropout=0.0,
                bias="none",
                task_type="CAUSAL_LM",
            )
            self.model = peft.get_peft_model(self.model, conf).train()
            self.fwd = self.model
            copied = 0
            with torch.no_grad():
                for target, ad in adapters.items():
                    for i in range(cfg.n_layers):
                        owner = "mlp" if target.startswith("layers/w_") else "self_attn"
                        mod = getattr(self.model.base_model.model.model.layers[i], owner)
                        mod = getattr(mod, HF_MODULE[target])
                        mod.lora_A["default"].weight.copy_(torch.from_numpy(np.array(ad["a"][i].T)))
                        mod.lora_B["default"].weight.copy_(torch.from_numpy(np.array(ad["b"][i].T)))
                        assert mod.scaling["default"] == spec.scale, (mod.scaling, spec.scale)
                        copied += 1
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            if copied * 2 != len(trainable):
                raise ValueError(f"PEFT trains {len(trainable)} tensors; jaxcl's adapters are {copied} pairs")
            self.name = "torch-peft-lora"
            del self.opt
            try:
                self.opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=WEIGHT_DECAY, fused=True)
            except (RuntimeError, TypeError):
                self.opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=WEIGHT_DECAY, foreach=True)

    def __call__(self):
        torch = self.torch
        losses = []
        for _ in range(self.steps):
            with torch.autocast(self.dev, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.fwd(self.ids, labels=self.ids).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        if self.dev == "cuda":
            torch.cuda.synchronize()
        losses = torch.stack(losses).float().cpu().tolist()
        if self.first_call_losses is None:
            self.first_call_losses = losses
        return losses[0]

    def memory(self) -> dict:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        state = [v for s in self.opt.state.values() for v in s.values() if self.torch.is_tensor(v)]
        return {
            "trainable_params": int(sum(p.numel() for p in trainable)),
            "optimizer_state_bytes": int(sum(v.numel() * v.element_size() for v in state)),
        }


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_rise(fn, interval_s=0.001) -> int:
    """Peak resident-set rise during ``fn()`` over the resident set just before it (freed memory
    given back first), sampled every ``interval_s``."""
    gc.collect()
    malloc_trim()
    base = rss_bytes()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    return max(peak[0], rss_bytes()) - base


def side_memory(side) -> dict:
    """The side's :meth:`memory` and its working set over one more (untimed) call."""
    out = side.memory()
    torch_cuda = getattr(side, "dev", None) == "cuda"
    if torch_cuda:
        torch = side.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        side()
        out["peak_allocated_rise_bytes"] = int(torch.cuda.max_memory_allocated() - before)
        out["memory_measure"] = "torch.cuda.max_memory_allocated rise over one call"
    elif isinstance(side, TorchSide) or side.jax.default_backend() == "cpu":
        out["peak_rss_rise_bytes"] = peak_rss_rise(side)
        out["memory_measure"] = "peak RSS rise over one steady-state call (after malloc_trim, 1 ms samples)"
    return out


def lora_flops_per_token(cfg, T, adapter_params) -> float:
    """Forward + input gradients of every weight (4 x weights; a frozen weight has no weight
    gradient), attention as ``model_flops_per_token``, 6 x the adapters' parameters."""
    full = model_flops_per_token(cfg, T)
    attn = 12 * cfg.n_layers * T * cfg.d_model
    return (full - attn) * 4 / 6 + attn + 6 * adapter_params


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4, help="SmolLM2-135M has 30")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0, help="the scale is alpha / rank")
    p.add_argument(
        "--targets",
        default="all",
        choices=["all", "default"],
        help="all: q,k,v,o and the MLP's gate/up/down (lora.LLAMA_ALL); default: jaxcl's (wq, wv)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="jaxcl sides only (no PyTorch / PEFT)")
    p.add_argument("--tiny", action="store_true", help="tiny model, for a quick check")
    p.add_argument("--note", default=None, help="a note stored in every row (the load, what changed)")
    p.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "lora_step_cpu.jsonl"),
    )
    a = p.parse_args(argv)

    import jax

    from jaxcl.models import llama, lora

    base = llama.tiny(vocab_size=512) if a.tiny else llama.smollm2_135m(n_layers=a.layers)
    cfg = base.replace(compute_dtype=a.dtype)
    if a.tiny:
        a.batch, a.seq, a.steps, a.repeats = 2, 32, 2, 2
    targets = lora.LLAMA_ALL if a.targets == "all" else lora.DEFAULT_TARGETS["llama"]
    spec = lora.LoraSpec(targets=tuple(targets), rank=a.rank, alpha=a.alpha)
    params = llama.init_params(base, seed=0)
    adapters = lora.init(spec, params, jax.random.fold_in(jax.random.key(0), lora.KEY))
    adapters = jax.tree.map(np.asarray, adapters)  # one set, copied into both LoRA sides
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, base.vocab_size, (a.batch, a.seq)).astype(np.int32)
    info = meta() if not a.no_torch else None
    if info is None:
        from jaxcl import report

        info = {
            "versions": report.versions(),
            "device": report.device_info(),
            "git_commit": report.git_commit(),
        }
    else:
        import peft

        info["versions"]["peft"] = peft.__version__
    on_cpu = jax.default_backend() == "cpu"
    cpu_peaks = (
        cpu_matmul_peaks(
            [(1024, 1024, 1024), (2048, 2048, 2048), (a.batch * (a.seq - 1), base.d_model, base.vocab_size)]
            if not a.tiny
            else [(64, 64, 64), (a.batch * (a.seq - 1), base.d_model, base.vocab_size)]
        )
        if on_cpu
        else None
    )
    log = lambda s: print(s, flush=True)
    log(
        f"[lora_step] {info['device']}; cfg layers {base.n_layers} d {base.d_model} vocab "
        f"{base.vocab_size}, B {a.batch} T {a.seq}, {a.steps} steps/call, {a.dtype}; LoRA rank "
        f"{spec.rank} alpha {spec.alpha:g} on {', '.join(t.split('/')[-1] for t in spec.targets)}"
        + (f"; CPU matmul GFLOP/s {cpu_peaks['by_shape']}" if cpu_peaks else "")
    )

    sides = [
        JaxSide(cfg, params, tokens, a.steps, LR, spec, adapters),
        JaxSide(cfg, params, tokens, a.steps, LR),
    ]
    if not a.no_torch:
        sides += [
            TorchSide(cfg, params, tokens, a.steps, LR, a.dtype, spec, adapters),
            TorchSide(cfg, params, tokens, a.steps, LR, a.dtype),
        ]
    first_loss = {}
    load = [os.getloadavg()[0]]
    first, st = bench(sides, a.repeats, log, first_loss)
    load.append(os.getloadavg()[0])
    mem = {s.name: side_memory(s) for s in sides}  # untimed, after the timed repeats

    n_tok = a.batch * a.seq * a.steps
    n_adapter = sum(x.size for x in jax.tree.leaves(adapters))
    fpt = {"lora": lora_flops_per_token(base, a.seq, n_adapter), "full": model_flops_per_token(base, a.seq)}
    jaxcl_of = {"lora": "jaxcl-lora", "full": "jaxcl-full"}
    rows = []
    for s in sides:
        name = s.name
        mode = "lora" if name.endswith("lora") else "full"
        med = st[name]["median_s"]
        peer = not name.startswith("jaxcl")
        full_of = "jaxcl-full" if name.startswith("jaxcl") else "torch-full"
        row = dict(
            workload=f"llm_train_{mode}",
            side=name,
            mode=mode,
            layers=base.n_layers,
            d_model=base.d_model,
            vocab=base.vocab_size,
            batch=a.batch,
            seq=a.seq,
            steps_per_call=a.steps,
            dtype=a.dtype,
            lora_rank=spec.rank if mode == "lora" else None,
            lora_alpha=spec.alpha if mode == "lora" else None,
            lora_targets=list(spec.targets) if mode == "lora" else None,
            steps_per_s=a.steps / med,
            tokens_per_s=n_tok / med,
            first_call_s=first[name],
            first_loss=first_loss[name],  # the first step's loss: B = 0, so equal on all four sides
            loss_after_first_call=s.first_call_losses[-1],
            first_call_losses=s.first_call_losses,
            **st[name],
            ratio_peer_over_jaxcl=(med / st[jaxcl_of[mode]]["median_s"]) if peer else None,
            lora_speedup_over_full=(
                st[full_of]["median_s"] / med if mode == "lora" and full_of in st else None
            ),
            flops=fpt[mode] * n_tok,  # per call; counted as the docstring says
            flops_counted="4 x weights + 6 x adapters per token (LoRA)"
            if mode == "lora"
            else "6 x weights per token (full)",
            model_gflops_per_s=fpt[mode] * n_tok / med / 1e9,
            cpu_matmul_peak_gflops=cpu_peaks,
            memory=mem[name],
            loadavg_1min=[round(v, 2) for v in load],
            **info,
        )
        if a.note:
            row["note"] = a.note
        rows.append(row)

    mib = lambda b: "-" if b is None else f"{b / 2**20:.1f}"
    log(
        f"{'side':16s} {'steps/s':>8s} {'tokens/s':>9s} {'median s':>9s} {'first s':>8s} "
        f"{'first loss':>10s} {'loss after':>10s} {'trainable':>10s} {'opt MiB':>8s} "
        f"{'XLA t+a+o MiB':>13s} {'RSS+ MiB':>9s} {'peer/jaxcl':>10s} {'full/lora':>9s} {'GFLOP/s':>8s}"
    )
    for r in rows:
        m = r["memory"]
        xla = m.get("xla_memory_analysis_bytes", {}).get("temp_argument_output")
        rss = m.get("peak_rss_rise_bytes", m.get("peak_allocated_rise_bytes"))
        log(
            f"{r['side']:16s} {r['steps_per_s']:8.2f} {r['tokens_per_s']:9.1f} {r['median_s']:9.3f} "
            f"{r['first_call_s']:8.2f} {r['first_loss']:10.5f} {r['loss_after_first_call']:10.5f} "
            f"{m['trainable_params']:10d} {mib(m['optimizer_state_bytes']):>8s} {mib(xla):>13s} "
            f"{mib(rss):>9s} {'-' if r['ratio_peer_over_jaxcl'] is None else format(r['ratio_peer_over_jaxcl'], '.2f'):>10s} "
            f"{'-' if r['lora_speedup_over_full'] is None else format(r['lora_speedup_over_full'], '.2f'):>9s} "
            f"{r['model_gflops_per_s']:8.1f}"
        )
    losses = [r["first_loss"] for r in rows]
    log(f"first-step losses agree within {max(losses) - min(losses):.2e} (B = 0: LoRA starts at the base)")
    if cpu_peaks:
        log(
            f"CPU matmul peak in this run: float32 {cpu_peaks['float32']} GFLOP/s, bf16 {cpu_peaks['bfloat16']}"
        )
    log(f"1-minute load average: {load}")
    append_rows(a.out, rows, log)
    return rows


if __name__ == "__main__":
    main()
