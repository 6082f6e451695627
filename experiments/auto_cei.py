"""Auto-CEI (Zhao et al., "Automatic Curriculum Expert Iteration for Reliable LLM Reasoning", ICLR
2025) against SFT, plain expert iteration and GRPO with a fixed "I don't know" reward, on the chain
task (a running sum of 0/1 terms with written steps) at 2-16 steps, after a base SFT of a small
Llama trained from scratch (byte tokenizer) whose mix answers IDK on 10 % of the rows.

    jaxcl run auto-cei --tiny                      # seconds; what the tests run
    jaxcl run auto-cei                             # the default size (2-core CPU: see below)
    jaxcl run auto-cei --set rows=ei,auto-cei --set curriculum.lam=0.5

Expected runtime (2-core CPU): --tiny ~35-60 s (mostly compiling); default (16 seeds) 33.9 min
with one other study on the 2 cores. Result and its reading (the paper's claim not reproduced:
Auto-CEI's refusals concentrate on the long chains but its precision stays below SFT's, and it
refuses a quarter of the easiest chains): README, "Reliable reasoning: Auto-CEI"
(results/studies/auto-cei.json).

Writes runs/auto-cei[-tiny]/results.json.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "auto-cei",
        "finetune": {"lr": 1e-4},
        # kl none: TRL's beta = 0, no reference forward (the rows compare the IDK rewards, not the KL)
        "grpo": {"lr": 1e-4, "group_size": 8, "max_new_tokens": 36, "kl": "none"},
        "auto_cei": {"lr": 1e-4, "group_size": 8, "max_new_tokens": 36},
        # 2-16 steps: at 1-6 the base model already answered ~98 % (no boundary for IDK to find)
        "data": {"levels": (2, 4, 8, 12, 16), "prompt_len": 40, "answer_len": 36},
        "seeds": 16,
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
                "levels": (1, 2),
                "n_train": 32,
                "n_val": 4,
                "n_eval": 4,
                "prompt_len": 12,
                "answer_len": 8,
            },
            base={"steps": 20, "batch_size": 16, "lr": 3e-3},
            post={"rounds": 2, "iterations": 2, "batch_size": 2},
            seeds=2,
        )
        cfg["grpo"].update(group_size=2, max_new_tokens=8)
        cfg["auto_cei"].update(group_size=2, max_new_tokens=8)
    return cfg
