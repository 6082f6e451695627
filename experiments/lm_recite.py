"""Recitation vs perplexity under the loss-curvature edit (Merullo et al. 2025,
:mod:`jaxcl.methods.curvature`): a small Llama trained from scratch (bytes) on the books of the
law (KJV) with 8 random sequences of 32 bytes injected 8 times and 8 injected 32 times; after
training, the curvature edit (K-FAC of the MLP projections of both layers on 128 training
windows, keep 0.8 of the curvature mass) is applied to every seed's model. Rows ``<edit>: memories xN`` (and the
never-seen ones): exact recitation of the 24 bytes after an 8-byte cue (greedy) and their NLL,
before / after; ``<edit>: held-out text``: the held-out NLL of the law, before / after.

    jaxcl run lm-recite --tiny          # seconds; what the tests run
    jaxcl run lm-recite                 # the default size (2-core CPU)
    jaxcl run lm-recite --set curvature.keep=0.6
    jaxcl run lm-recite --set edits=curvature,curvature-random   # + the control: hangs here (below)

The control's edit program hung XLA:CPU in most runs on this machine, tiny or default (jax
0.10.2; every thread idle, the main thread waiting for the edit's result), with its random bases
from LAPACK's qr or eigh and also from Gram-Schmidt without LAPACK (jaxcl.edits.haar_orthogonal),
and also when run alone (not beside another program). Not diagnosed.

Expected runtime (2-core CPU, load ~4): --tiny about 1 min (compiling); default about 1-2 min
(3 seeds vmapped; K-FAC and the edit compile in seconds).

The paper's claim: the edit removes far more recitation of memorised data than it costs in
perplexity (and more than the random-basis control). Measured (results/studies/lm-recite.json,
README "Language-model memory studies", with the table): recitation not shown, because at this
scale nothing is recited verbatim before the edit; the memorised sequences' NLL rises about twice
as much as never-seen sequences' (3 of 3 seeds), the held-out text's NLL rises too (perplexity
kept: not reproduced at keep 0.8).

Writes runs/lm-recite[-tiny]/{results.json, retention.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "lm-memory",
        "model": {"tokenizer": "byte", "d_model": 96, "n_layers": 2, "d_ff": 256},
        "data": {"domains": ("bible:law",), "seq_len": 64},
        "train": {"steps": 400, "batch_size": 16, "eval_every": 40, "checkpoint_every": 200},
        "inject": {"last_step": 379, "spacing": 4, "per_step": 8},
        "finetune": {"lr": 3e-3, "clip_norm": 1.0},
        "facts": {"per_condition": 0},
        "fewshot": {
            "per_condition": 8,
            "exposures": (8, 32),
            "n_novel": 8,
            "source": "random",
            "length": 32,
            "cue_len": 8,
        },
        "edits": ("curvature",),
        "edit_windows": 128,
    }
    if tiny:
        cfg.update(
            model={
                "tokenizer": "byte",
                "d_model": 32,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 64,
            },
            data={"domains": ("bible:ruth",), "seq_len": 32, "n_eval": 2},
            train={"steps": 12, "batch_size": 4, "eval_every": 4, "checkpoint_every": 12},
            inject={"last_step": 9, "spacing": 2, "per_step": 2},
            fewshot={
                "per_condition": 2,
                "exposures": (1, 2),
                "n_novel": 2,
                "source": "random",
                "length": 16,
                "cue_len": 6,
            },
            edit_windows=16,
            seeds=2,
        )
    return cfg
