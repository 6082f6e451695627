"""Junk-data decline ("LLMs Can Get Brain Rot!"): a small Llama pre-trained on bible text and
procedural tasks, then continually pre-trained on mixtures of junk text (headlines, Rotten
Tomatoes snippets) and control text (convention speeches) at matched token counts; the
dose-response of task accuracy and general-text loss over the junk ratio, and Hedges' g.

    jaxcl run lm-junk --tiny                      # seconds; what the tests run
    jaxcl run lm-junk                             # the default size (2-core CPU: see below)
    jaxcl run lm-junk --set junk.ratios=0,1 --set seeds=10

Expected runtime (2-core CPU): --tiny ~15 s; default: measured in the README section
"Language-model continual pre-training".

Writes runs/lm-junk[-tiny]/{results.json, dose_response.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {"study": "lm-junk", "finetune": {"lr": 1e-3}}
    if tiny:
        cfg.update(
            data={
                "base_domains": ("zen",),
                "control": ("bible:ruth",),
                "junk": ("rotten:plot",),
                "tasks": ("add", "rev"),
                "task_lines": 100,
                "n_probe": 8,
                "seq_len": 32,
                "n_eval": 4,
                "max_train": 64,
            },
            base={"steps": 8, "batch_size": 4, "lr": 3e-3, "task_fraction": 0.5},
            junk={"ratios": (0.0, 1.0), "steps": 8, "batch_size": 4, "eval_every": 4},
            finetune={"lr": 1e-2},
            seeds=3,
        )
    return cfg
