"""Factual knowledge acquisition and forgetting during pre-training (study 2) with numeric and
entity memorisation probes (study 7): a small Llama trained from scratch (byte tokenizer) on the
books of the law (KJV), with fictional facts injected 1, 4 and 16 times, all last seen at step
200, and 8-digit numbers / entity names injected 4 times beside as many never seen.

    jaxcl run lm-facts --tiny                       # seconds; what the tests run
    jaxcl run lm-facts                              # the default size (2-core CPU: see below)
    jaxcl run lm-facts --set train.batch_size=32    # the batch-size effect
    jaxcl run lm-facts --set data.duplication=8     # the duplication effect (1/8 of the windows)
    jaxcl sweep lm-facts --grid finetune.lr=1e-3,3e-3
    jaxcl run lm-facts --set model.name=smollm2-135m --set data.seq_len=64   # an accelerator run

Expected runtime (2-core CPU): --tiny 14 s (mostly compiling); default 4 min on an idle machine,
9-13 min with other jobs running (3 seeds vmapped, 400 steps of 16 x 64 tokens, 20 in-loop
evaluations of 768 span probes).

Measured result, default (mean ± std over 3 seeds; Δlogp = gain of log p(true value) - log p(a
never-seen value) per target token, paired, from before the first exposure; retained = end / peak;
alpha: power law of the gain from its peak on, per seed):

    memorisation probe   Δlogp peak   Δlogp end    retained   alpha
    facts x1             0.87 ± 0.19  0.70 ± 0.16  0.80       0.10-0.14 (R² 0.43-0.66)
    facts x4             1.34 ± 0.31  1.08 ± 0.24  0.81       0.11-0.18 (1 seed: no decay)
    facts x16            1.69 ± 0.53  0.99 ± 0.39  0.57       0.09-0.19 (R² 0.34-0.87)
    facts never seen     0.04         0.02         -          -
    numbers seen/unseen  1.18 / 0.02  1.14 / 0.02  0.98       -
    entities seen/unseen 2.69 / 0.04  2.17 / 0.01  0.81       0.12-0.28

Exact match of the spans: 0-6 % everywhere (seen or not). README: "Language-model memory
studies", with the papers' findings beside these numbers.

Writes runs/lm-facts[-tiny]/{results.json, retention.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "lm-memory",
        "model": {"tokenizer": "smollm2"},
        "data": {"domains": ("bible:law",), "seq_len": 64},
        "train": {"steps": 400, "batch_size": 16, "eval_every": 20, "checkpoint_every": 100},
        "inject": {"last_step": 219, "spacing": 8, "per_step": 8},
        "finetune": {"lr": 3e-3, "clip_norm": 1.0},
        "facts": {"per_condition": 8, "exposures": (1, 4, 16)},
        "numeric": {"per_kind": 8, "exposures": 4, "digits": 8},
        "fewshot": {"per_condition": 0},
    }
    if tiny:
        cfg.update(
            model={
                "d_model": 32,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 64,
                "tokenizer": "byte",
            },
            data={"domains": ("bible:ruth",), "seq_len": 128, "n_eval": 2},
            train={"steps": 12, "batch_size": 4, "eval_every": 2, "checkpoint_every": 6},
            inject={"last_step": 5, "spacing": 2, "per_step": 2},
            facts={"per_condition": 1, "exposures": (1, 2)},
            numeric={"per_kind": 1, "exposures": 2, "digits": 4},
            seeds=2,
        )
    return cfg
