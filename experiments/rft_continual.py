"""Continual post-training: SFT vs RFT (GRPO with and without its KL penalty, RIF-RFT) vs
multi-task SFT on a sequence of verifiable tasks, after a base SFT of a small Llama trained from
scratch (byte tokenizer) on the KJV bible and examples of every task.

    jaxcl run rft-continual --tiny                      # seconds; what the tests run
    jaxcl run rft-continual                             # the default size (2-core CPU: see below)
    jaxcl run rft-continual --set rows=sft,rft --set grpo.beta=0.1 --set seeds=1
    jaxcl run rft-continual --set model.name=smollm2-135m --set base.steps=0   # a GPU run

Expected runtime (2-core CPU): --tiny 21 s (a 1-layer d-32 model, add -> rev, 20 base steps, 4
iterations per task, 2 seeds; mostly compiling the base, SFT and GRPO programs); default 3.0 min
idle, 5.9 min with other jobs running (base SFT 55-130 s, then sft 12 s, rft 36 s, rft-nokl 29 s
(shares rft's program), rif-rft 42 s, mtl-sft 5 s).

Measured result, default (3 seeds, mean ± std; deterministic; forgetting in %, ΔNLL in nats/byte
of held-out bible verses, base-task = `sub`, seen in the base mix only; 5.7 min at load ~6):

    row       ACC    BWT    Forgetting  learning acc  ΔNLL corpus  base-task acc
    sft       70.6  -14.2   14.4        81.2          0.005        73.4
    rft       71.2  -11.1   11.3        79.6          0.006        76.0
    rft-nokl  69.3  -13.4   13.7        79.3          0.009        73.4
    rif-rft   72.7   -8.5    9.2        79.0          0.008        72.4
    mtl-sft   82.0    4.3    1.4        78.8          0.006        74.5

RFT forgets less than SFT on average (within SFT's seed spread, std 9.3); a stronger KL penalty
lowers it further: `jaxcl sweep rft-continual --grid grpo.beta=1,3` forgetting 7.3 / 7.1. README:
"Reinforcement fine-tuning and forgetting", with the papers' findings beside these numbers.

Writes runs/rft-continual[-tiny]/{results.json, accuracy_matrix.png, accuracy_over_training.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "rft",
        "finetune": {"lr": 1e-4},
        "grpo": {"lr": 1e-4, "beta": 0.1, "group_size": 8, "max_new_tokens": 8, "rif_pool": 2},
    }
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
