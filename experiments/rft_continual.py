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
of held-out bible verses, base-task = `sub`, seen in the base mix only):

    row       ACC    BWT    Forgetting  learning acc  ΔNLL corpus  base-task acc
    sft       75.9   -8.5   10.2        82.3          0.006        75.0
    rft       65.4  -21.2   22.6        81.2          0.005        79.7
    rft-nokl  68.2  -18.9   19.6        82.4          0.006        82.3
    rif-rft   66.3  -20.0   21.2        81.2          0.006        81.2
    mtl-sft   82.6   -0.2    2.4        82.7          0.006        79.2

RFT at beta 0.1 (or without KL) forgets earlier tasks more than SFT; a stronger KL penalty turns
it around: `--set rows=rft --set grpo.beta=1` forgetting 13.0, `grpo.beta=3` 5.4 (ACC 76.6, ΔNLL
0.001, base-task 84.4). README: "Reinforcement fine-tuning and forgetting", with the papers'
findings beside these numbers.

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
