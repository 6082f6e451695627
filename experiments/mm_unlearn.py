"""Multimodal misinformation unlearning (OFFSIDE, Zhu et al. 2025; SafeEraser's over-forgetting,
Chen et al. 2025): the small VLM (jaxcl.models.vlm) is trained from scratch on scikit-learn's
digits: captions and yes/no attributes of every digit, and a made-up fact ("rumour") about each
digit stated in the text, in the image (a marker pattern) or both; the rumours of 3 of the 10
digits are then unlearned by GA, GradDiff, NPO and IDK from a text-only (unimodal) or a
multimodal forget set. Test sets: forget efficacy per form, paraphrased prompts on other pictures,
templated prompt attacks, corrective relearning (10 steps on 16 forget rows), retained rumours,
utility and captions of the forgotten digits (over-forgetting); an oracle trained without the
forget rumours beside the original.

    jaxcl run mm-unlearn --tiny                   # what the tests run
    jaxcl run mm-unlearn --seeds 8                # the README's run
    jaxcl run mm-unlearn --set methods=npo --set unlearn.forget_sets=multimodal --set npo.lr=1e-4
    jaxcl run mm-unlearn --seeds 8 --set attack.trigger.steps=200 --set methods=graddiff,npo,idk
        # the trigger-search attack (Finding Dori) on every model: results/studies/mm-unlearn-trigger.json

Expected runtime (2-core CPU): --tiny about a minute (mostly compiling). Expected result: see the
README, "Multimodal unlearning" (results/studies/mm-unlearn.json).

Writes runs/mm-unlearn[-tiny]/results.json and unlearning.png.
"""

METHODS = ("ga", "graddiff", "npo", "idk")


def get_config(tiny: bool = False) -> dict:
    # one unlearning lr for every method, a tenth of the scratch model's training lr (3e-3); the
    # registry's defaults (set for TOFU's pretrained models) barely move it
    cfg = {"study": "mm-unlearn", **{m: {"lr": 3e-4} for m in METHODS}}
    if tiny:
        cfg.update(
            data={"n_utility": 16, "n_rumour": 8, "n_forget": 12, "n_eval": 8, "seq_len": 96},
            train={"steps": 4, "batch_size": 4, "lr": 3e-3, "eval_every": 2},
            unlearn={"steps": 2, "batch_size": 4, "eval_every": 2, "eval_size": 8},
            relearn={"steps": 2, "n": 4, "lr": 1e-3},
            attack={"trigger": {"steps": 2, "length": 4, "lr": 0.01, "mode": "edit"}},
            methods=("ga", "idk"),
            seeds=2,
        )
    return cfg
