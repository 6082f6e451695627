"""Continual post-training: SFT vs RFT (GRPO with and without its KL penalty, RIF-RFT) vs
multi-task SFT on a sequence of verifiable tasks, after a base SFT of a small Llama trained from
scratch (byte tokenizer) on the KJV bible and examples of every task.

    jaxcl run rft-continual --tiny                      # seconds; what the tests run
    jaxcl run rft-continual                             # the default size (2-core CPU: see below)
    jaxcl run rft-continual --set rows=sft,rft --set grpo.beta=0.1 --set seeds=1
    jaxcl run rft-continual --size accel                # SmolLM2-135M-Instruct, an accelerator

Expected runtime (2-core CPU): --tiny 21 s (a 1-layer d-32 model, add -> rev, 20 base steps, 4
iterations per task, 2 seeds; mostly compiling the base, SFT and GRPO programs); default (3 seeds)
3.0 min idle, 5.9 min with other jobs running; --seeds 16: 28 min at load ~3.6 (base SFT ~10 min,
then sft 77 s, rft 332 s, rft-nokl 300 s, rif-rft 392 s, mtl-sft 57 s).

Measured result, --seeds 16 (results/studies/rft-continual.json, commit 02ef018; mean ± std;
forgetting in %, ΔNLL in nats/byte of held-out bible verses, base-task = `sub`, seen in the base
mix only; base accuracy 77.4 %):

    <!-- results: results/studies/rft-continual.json -->
    | row      | ACC          | BWT          | Forgetting   | LA           | ΔNLL corpus    | base-task acc |
    |----------|--------------|--------------|--------------|--------------|----------------|---------------|
    | sft      |  72.3 ±  6.2 | -10.9 ±  6.0 |  11.3 ±  6.1 |  80.5 ±  6.8 |  0.005 ± 0.002 |  74.9 ± 12.7  |
    | rft      |  70.8 ±  7.7 | -11.2 ±  4.8 |  12.1 ±  4.7 |  79.2 ±  6.5 |  0.007 ± 0.002 |  76.6 ± 11.9  |
    | rft-nokl |  68.9 ±  7.7 | -13.1 ±  5.9 |  14.1 ±  6.3 |  78.7 ±  6.9 |  0.009 ± 0.003 |  74.6 ± 13.7  |
    | rif-rft  |  69.9 ±  7.6 | -12.5 ±  4.5 |  13.3 ±  4.3 |  79.3 ±  6.1 |  0.009 ± 0.002 |  73.9 ± 13.0  |
    | mtl-sft  |  80.1 ±  6.3 |   1.8 ±  2.1 |   1.4 ±  3.1 |  78.7 ±  6.8 |  0.006 ± 0.003 |  78.8 ± 12.0  |

Paired differences (seed i of every row starts from the same base model), mean ± the 95 %
interval's half-width over the 16 seeds:

    <!-- results: results/studies/rft-continual.json section=comparisons cols=forgetting:ci95 -->
    | difference     | Forgetting   |
    |----------------|--------------|
    | rft - sft      |   0.8 ±  3.9 |
    | rif-rft - sft  |   2.1 ±  3.3 |
    | rif-rft - rft  |   1.3 ±  1.8 |
    | rft-nokl - rft |   2.0 ±  2.4 |
    | mtl-sft - sft  |  -9.8 ±  3.0 |

No forgetting difference between SFT, RFT and RIF-RFT is shown (every interval contains 0); only
multi-task SFT forgets less. README: "Reinforcement fine-tuning and forgetting", with the papers'
findings beside these numbers.

--size accel: SmolLM2-135M-Instruct (pretrained, chat prompts of up to 64 tokens, bf16), a base
SFT of 200 steps of 32 on the mix (lr 5e-5: zero-shot the model answers no prompt in the checked
form, so GRPO alone would get no reward), 2-digit tasks, 200 SFT steps or GRPO iterations per task of 16 prompts (x 8 rollouts of
8 tokens for GRPO; lr 1e-5 SFT, 1e-6 GRPO), 4 seeds (a seed on two chips, its prompts and
rollouts split over them: `--mesh seeds=4,data=2`; one seed per chip, its 128 rollouts, needs
more than a chip's HBM).
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile rft-continual --size accel --target tpu-v5e-8 --mesh seeds=4,data=2 --set rows=sft,rft

    <!-- results: results/compile/rft-continual-smollm2-135m-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | base SFT (200 steps) | 6962.6 | 42.5 | 880.2 | 37.31 |
    | sft: a task call (50 steps) | 5338.3 | 32.6 | 770.5 | 30.40 |
    | sft: one step | 5178.7 | 31.6 | 111.9 | 16.04 |
    | rft: a task call (50 iterations) | 11075.7 | 67.6 | 1862.1 | 48.15 |
    | rft: one step | 12088.3 | 73.8 | 1203.4 | 30.69 |

Writes runs/rft-continual[-tiny]/{results.json, accuracy_matrix.png, accuracy_over_training.png}.
"""


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    cfg = {
        "study": "rft",
        "finetune": {"lr": 1e-4},
        "grpo": {"lr": 1e-4, "beta": 0.1, "group_size": 8, "max_new_tokens": 8, "rif_pool": 2},
    }
    # SmolLM2-135M-Instruct (chat prompts), 16 prompts x 8 rollouts, 4 seeds (--mesh seeds=4,data=2)
    if size == "accel":
        cfg.update(
            model={"name": "smollm2-135m", "tokenizer": "smollm2", "compute_dtype": "bfloat16"},
            data={
                "digits": 2,
                "n_train": 4000,
                "n_eval": 128,
                "corpus_eval": 128,
                "prompt_len": 64,
                "answer_len": 8,
            },
            # a base SFT on the mix first: zero-shot, SmolLM2 answers none of the prompts in the
            # checked form (results/studies/rft-continual-smollm2-nobase.json: accuracy 0.0 on
            # every task), so GRPO would have no reward; on the CPU 60 steps of 16 at lr 5e-5 gave
            # 96 % on 1-digit add / rev (results/studies/rft-continual-smollm2-cpu.json)
            base={"steps": 200, "batch_size": 32, "lr": 5e-5, "corpus_fraction": 0.5, "eval_every": 50},
            post={"steps_per_task": 200, "batch_size": 16, "eval_every": 50, "checkpoint_every": 50},
            finetune={"lr": 1e-5},
            seeds=4,
        )
        cfg["grpo"]["lr"] = 1e-6
        return cfg
    if tiny:
        cfg.update(
            model={
                "name": "scratch",
                "d_model": 32,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 64,
            },
            data={
                "tasks": ("add", "rev"),
                "base_tasks": ("sub",),
                "digits": 1,
                "n_train": 64,
                "n_eval": 8,
                "corpus": "zen",
                "corpus_eval": 8,
                "prompt_len": 12,
                "answer_len": 4,
            },
            base={"steps": 20, "batch_size": 16, "lr": 3e-3, "corpus_fraction": 0.5, "eval_every": 10},
            post={"steps_per_task": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2},
            rows=("sft", "rft", "rft-nokl", "mtl-sft"),
            seeds=2,
        )
        cfg["grpo"].update(group_size=4, max_new_tokens=4)
    return cfg
