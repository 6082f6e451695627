"""Multimodal continual instruction tuning: the small VLM (jaxcl.models.vlm: ViT patches -> MLP
projector -> Llama decoder) instruction-tuned on three image-text tasks made offline from
scikit-learn's digits (captions, yes/no attribute questions, counting and comparison over 2x2
grids; jaxcl.data.multimodal), one after another. Rows: SFT (finetune), KL to the previous task's
model (finetune+kl, LwF for an LM), ER, DER++ (every answer position's stored logits), EWC,
multi-task (joint) and RFT (grpo: GRPO with the image before every prompt and an exact-answer
reward, from a base model trained on every task, train.base_steps); answer accuracy and knowledge
accuracy matrices (A[i, j]: task j after task i), ACC, BWT, forgetting, and forgetting split into
essential (knowledge) and superficial (answer form) as SEFE does; SEFE's own remedies: RegLoRA
(reglora, LoRA rows) and answer style diversification (a +asd chain; reglora+asd is SEFE).

    jaxcl run mm-cit --tiny                        # what the tests run (rows er, finetune+kl)
    jaxcl run mm-cit --seeds 8                     # the README's run
    jaxcl run mm-cit --set methods=finetune,er --set kl.beta=0.5
    jaxcl run mm-cit --seeds 8 --set data.reasoning=true --set data.seq_len=68 \
        --set methods=finetune,finetune+kl,er      # the reasoning-quality matrix (README)
    jaxcl run mm-cit --seeds 8 --set train.base_steps=150 --set methods=finetune,grpo
    jaxcl run mm-cit --seeds 8 --set train.base_steps=150 --set methods=grpo --set grpo.kl=none
                                                   # RFT with and without its KL (README)
    jaxcl run mm-cit --seeds 8 --set model.lora.rank=8 \
        --set model.lora.targets=layers/wq,layers/wk,layers/wv,layers/wo,layers/w_gate,layers/w_up,layers/w_down \
        --set methods=finetune,reglora,finetune+asd,reglora+asd --set train.base_steps=150 \
        --set data.seq_len=72                      # SEFE: LoRA rows over a base model (README)
    jaxcl compile mm-cit --size accel --target tpu-v5e-8   # the accelerator size, compiled here

--size accel: a VLM with SmolLM2-135M's decoder shape (trained from scratch, byte tokens, bf16) and
a 6-layer ViT encoder on Fashion-MNIST image-text tasks, 8192 training examples per task, batches
of 16, 2000 steps per task, 8 seeds (one per chip of a v5e-8: ``--mesh auto``).
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile mm-cit --size accel --target tpu-v5e-8 --set methods=er

    <!-- results: results/compile/mm-cit-vlm-135m-fashion-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | er: init | 1404.7 | 8.6 | 19.9 | 1.81 |
    | er: evaluate | 3136.1 | 19.1 | 6892.7 | 110.00 |
    | er: a task (2000 steps) | 10002.6 | 61.1 | 3771.9 | 87.77 |
    | er: one step | 9754.5 | 59.5 | 325.5 | 24.41 |

Expected runtime (2-core CPU): --tiny about a minute (mostly compiling); 8 seeds about two hours
(five rows 66 min, DER++ 51 min) at load 3.5-5 with other jobs. Expected result: ER and DER++ forget
far less than SFT, a third of SFT's forgetting is superficial (README, "Vision-language model"; results/studies/mm-cit.json).
The SEFE run: 78 min (8 seeds, load 4.3 -> 1.9 with one other job); RegLoRA forgets less knowledge
than LoRA fine-tuning, ASD's effect is within the spread (README; results/studies/mm-cit-sefe.json).
The two RFT runs: 48 and 30 min (8 seeds, load 3-4); RFT forgets far less than SFT with or
without its KL, and learns each task less (README; results/studies/mm-cit-rft.json).

Writes runs/mm-cit[-tiny]/results.json.
"""


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    cfg = {
        "study": "mm-cit",
        "finetune": {"lr": 3e-3},
        "er": {"lr": 3e-3, "replay_fraction": 0.5, "capacity": 512},
        "der": {"lr": 3e-3, "capacity": 512, "memory_batch": 32},
        "derpp": {"lr": 3e-3, "capacity": 512, "memory_batch": 32},
        "ewc": {"lr": 3e-3},
        "kl": {"beta": 1.0},
        # SEFE's rows (methods=finetune,reglora,finetune+asd,reglora+asd with model.lora.rank): the
        # LoRA rows at fine-tuning's lr, so that they differ by RegLoRA's penalty only
        "reglora": {"lr": 3e-3},
        # RFT rows (methods=...,grpo; they need train.base_steps): completions long enough for
        # Fashion-MNIST's longest caption and its end token
        "grpo": {"lr": 3e-4, "group_size": 8, "max_new_tokens": 16},
    }
    if size == "accel":  # SmolLM2-135M's decoder shape from scratch, Fashion-MNIST, 8 seeds (one per chip)
        cfg.update(
            model={
                "d_model": 576,
                "n_layers": 30,
                "n_heads": 9,
                "n_kv_heads": 3,
                "d_ff": 1536,
                "patch": 4,
                "enc_dim": 384,
                "enc_depth": 6,
                "enc_heads": 6,
                "enc_mlp": 1536,
                "compute_dtype": "bfloat16",
            },
            data={"dataset": "fashion-mnist", "n_train": 8192, "n_eval": 512, "seq_len": 56},
            train={"steps_per_task": 2000, "batch_size": 16, "eval_every": 250, "consolidate_samples": 128},
            finetune={"lr": 3e-4},
            er={"lr": 3e-4, "replay_fraction": 0.5, "capacity": 4096},
            der={"lr": 3e-4, "capacity": 4096, "memory_batch": 16},
            derpp={"lr": 3e-4, "capacity": 4096, "memory_batch": 16},
            ewc={"lr": 3e-4},
            seeds=8,
        )
    if tiny:
        cfg.update(
            data={"n_train": 64, "n_eval": 16, "seq_len": 56},
            train={"steps_per_task": 4, "batch_size": 4, "eval_every": 2},
            er={"lr": 3e-3, "replay_fraction": 0.5, "capacity": 16},
            methods=("er", "finetune+kl"),  # replay's and a consolidating method's paths
            seeds=2,
        )
    return cfg
