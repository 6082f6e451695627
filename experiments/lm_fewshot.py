"""Recognition, recall and retention of few-shot memories (study 3): a small Llama trained from
scratch (SmolLM2's tokenizer restricted to the run's ids) on the books of the law (KJV), with
sequences of 48 tokens from the gospels (outside the stream) seen 1, 2 or 4 times, last seen at
step 215-219 (inject.last_step: 219); recognition is the AUC of seen vs 16 novel gospel
sequences from the per-sequence loss, recall the greedy continuation of 32 tokens from a cue of 16.

    jaxcl run lm-fewshot --tiny                            # seconds; what the tests run
    jaxcl run lm-fewshot                                   # the default size (2-core CPU)
    jaxcl run lm-fewshot --set fewshot.source=random       # stimuli without structure

Expected runtime (2-core CPU): --tiny 12 s; default about 4 min idle, 7 min with other jobs
running (3 seeds vmapped).

Measured result, default (results/studies/lm-fewshot.json, commit 02ef018, 275 s in all (199 s
of training) at load ~3.5; mean ± std over 3 seeds; AUC: recognition of seen vs 16 novel
sequences from the per-sequence loss, before the first exposure, at the first evaluation after the last exposure
(step 220), 20 steps later (the peak, mean over seeds) and at step 400; Δlogp: log-likelihood gain
over the novel sequences, nats/token; recall tok: token accuracy of a 32-token greedy continuation
from a 16-token cue, %; exact recall is 0 % everywhere):

    <!-- results: results/studies/lm-fewshot.json cols=auc_before,auc_after,info.curves_mean.auc[11:12],auc_final,gain_peak,gain_final,recall_tok_final -->
    | condition | AUC before | AUC after | AUC 20 steps later | AUC end | Δlogp peak | Δlogp end | recall tok end |
    |---|---|---|---|---|---|---|---|
    | memories x1 | 0.55 ± 0.01 | 0.64 ± 0.00 | 0.83 | 0.74 ± 0.03 | 0.66 ± 0.12 | 0.50 ± 0.11 | 4.2 ± 0.2 |
    | memories x2 | 0.70 ± 0.02 | 0.94 ± 0.01 | 0.96 | 0.85 ± 0.02 | 0.74 ± 0.12 | 0.52 ± 0.07 | 3.2 ± 0.3 |
    | memories x4 | 0.68 ± 0.02 | 1.00 ± 0.00 | 1.00 | 0.89 ± 0.03 | 1.41 ± 0.14 | 0.71 ± 0.14 | 3.1 ± 0.5 |
    | memories novel | - | - | - | - | 0.35 ± 0.05 | 0.16 ± 0.11 | 4.0 ± 0.3 |

Power-law exponents of the gain after its peak: 0.17-0.21.

Writes runs/lm-fewshot[-tiny]/{results.json, retention.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "lm-memory",
        "model": {"tokenizer": "smollm2"},
        "data": {"domains": ("bible:law",), "seq_len": 64},
        "train": {"steps": 400, "batch_size": 16, "eval_every": 20, "checkpoint_every": 100},
        "inject": {"last_step": 219, "spacing": 8, "per_step": 8},
        "finetune": {"lr": 3e-3, "clip_norm": 1.0},
        "facts": {"per_condition": 0},
        "fewshot": {
            "per_condition": 16,
            "exposures": (1, 2, 4),
            "n_novel": 16,
            "source": "bible:gospels",
            "length": 48,
            "cue_len": 16,
        },
    }
    if tiny:
        cfg.update(
            model={
                "d_model": 32,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 64,
                "tokenizer": "smollm2",
            },
            data={"domains": ("bible:ruth",), "seq_len": 32, "n_eval": 2},
            train={"steps": 12, "batch_size": 4, "eval_every": 2, "checkpoint_every": 6},
            inject={"last_step": 5, "spacing": 2, "per_step": 2},
            fewshot={
                "per_condition": 2,
                "exposures": (1, 2),
                "n_novel": 2,
                "source": "random",
                "length": 16,
                "cue_len": 6,
            },
            seeds=2,
        )
    return cfg
