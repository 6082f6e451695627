"""Class unlearning on Fashion-MNIST: SSD, GU and IAU against the baselines and the oracle.

    jaxcl run unlearn-class                                    # this config (ResNet-18)
    jaxcl run unlearn-class --tiny                             # seconds; what the tests run
    jaxcl run unlearn-class --tiny --seeds 16                  # with U-LiRA (needs --seeds 3+)
    jaxcl run unlearn-class --set ssd.alpha=5 --set methods=ssd,gu-npo --seeds 3
    jaxcl run unlearn-class --set data.scenario=sub-class --set data.forget_class=0
    jaxcl run unlearn-class --model vit --set ssd.alpha=5      # ViT: the SSD paper's alpha
    jaxcl run unlearn-class --set iau_reg_train=true           # + rows original-reg, iau-reg (IAU from its regularised original)
    jaxcl sweep unlearn-class --tiny --grid ssd.alpha=5,10,20 [--grid ssd.lambda=0.5,1]

An original ResNet-18 (28x28 variant, width 16, pure BatchNorm: batch statistics in training,
recalibrated running statistics afterwards) is trained once on 5000 training examples (500 per
class, the registry's finetune: Adam 1e-3, 500 steps of 64), then every method unlearns class 3
(dress) from it: oracle (the same recipe from scratch on the retain set), fine-tune, GA,
GradDiff, NPO (beta 0.1), random labels, SSD (alpha 10, lambda 1), GU on GA / GradDiff / NPO
(rank 8, per tensor), IAU (one Adam step); 15 unlearning steps each, all seeds of a method in one
compiled program. The unlearning learning rates below are the ResNet table (the MLP ones, the
registry defaults, destroy the ResNet's retain accuracy for NPO and GradDiff). Metrics: forget /
retain / test accuracy and the mean gap to the oracle, a loss/entropy membership-inference
attack (fraction of forget examples called members), linear CKA of penultimate features on
forget examples to the original and the oracle, a linear probe for the forgotten class, a
10-step relearning attack, wall-clock per method, and U-LiRA (Hayes et al. 2024: columns
ULiRA_auc / ULiRA_acc) when the run has --seeds 3 or more: the seeds are the shadow models (N =
the number of seeds, each held out once as the target), so U-LiRA is NaN at the default of one
seed (the default stays one seed: each seed trains its own original and oracle). A ViT no
longer switches SSD to alpha 5 by itself: pass --set ssd.alpha=5.

Expected runtime (2-core CPU, one seed, measured after the redesign): default size 6.2 minutes
wall, 13.8 min at load ~4 with another job on the cores (original and oracle about 70 s of
training each, each method 3-9 s plus compilation; the pre-redesign code takes the same 71 s for the original on this machine: the 3.6 minutes of the
old header came from a faster one); --tiny (MLP 784-128-64-10, 100 examples per class, 150
training steps) 32 s. A rerun into the same --out loads the original, the oracle and every
finished method from <out>/cache (5 s default, 3 s tiny; --fresh recomputes). Not measured on a
GPU.

Measured result, default size (results/studies/unlearn-class.json, commit 02ef018, one seed,
13.8 min at load ~4; accuracies as fractions):

    <!-- results: results/studies/unlearn-class.json -->
    | method       | forget | retain | test   | gap    | MIA_f  | CKA_orig | CKA_orc | probe_f | relearn |
    |--------------|--------|--------|--------|--------|--------|----------|---------|---------|---------|
    | oracle       |  0.000 |  0.979 |  0.841 |  0.000 |  0.000 |  0.303   |  1.000  |  0.789  |  0.012  |
    | original     |  0.982 |  0.969 |  0.830 |  0.335 |  0.865 |  1.000   |  0.303  |  0.842  |  1.000  |
    | finetune     |  0.122 |  0.916 |  0.825 |  0.067 |  0.022 |  0.485   |  0.433  |  0.716  |  1.000  |
    | ga           |  0.008 |  0.907 |  0.783 |  0.046 |  0.000 |  0.817   |  0.269  |  0.821  |  1.000  |
    | graddiff     |  0.644 |  0.964 |  0.839 |  0.221 |  0.062 |  0.941   |  0.302  |  0.832  |  1.000  |
    | npo          |  0.004 |  0.907 |  0.782 |  0.045 |  0.000 |  0.816   |  0.269  |  0.821  |  1.000  |
    | random_label |  0.000 |  0.937 |  0.803 |  0.027 |  0.000 |  0.651   |  0.218  |  0.789  |  1.000  |
    | ssd          |  0.000 |  0.889 |  0.768 |  0.055 |  0.000 |  0.682   |  0.309  |  0.821  |  0.655  |
    | gu-ga        |  0.072 |  0.949 |  0.817 |  0.042 |  0.000 |  0.877   |  0.273  |  0.842  |  1.000  |
    | gu-graddiff  |  0.000 |  0.871 |  0.755 |  0.065 |  0.000 |  0.691   |  0.235  |  0.789  |  0.998  |
    | gu-npo       |  0.072 |  0.949 |  0.817 |  0.042 |  0.000 |  0.876   |  0.273  |  0.842  |  1.000  |
    | iau          |  0.000 |  0.239 |  0.238 |  0.448 |  0.095 |  0.419   |  0.231  |  0.789  |  0.000  |

Random labels forget fully at the smallest gap to the oracle; GA and NPO forget at retain 0.91,
GU-GA and GU-NPO keep retain closer (0.95) and forget less in 15 steps (0.07); GU-GradDiff forgets
fully at retain 0.87; plain GradDiff at lr 1e-5 barely forgets (0.64). SSD forgets fully at
retain 0.89 with this original (earlier originals of the same recipe gave 0.93, 0.28 and 0.18)
and is the one method that keeps retain accuracy which the relearning attack does not fully undo
(0.66 after 10 steps); IAU's single reference step forgets fully but destroys retain accuracy
(0.24). The linear probe does not separate methods: dress is linearly decodable even from the
oracle's features (0.79).

Measured result, --tiny (results/studies/unlearn-class-tiny.json, one seed, 115 s with two
studies on the 2-core CPU; accuracies as fractions):

    <!-- results: results/studies/unlearn-class-tiny.json cols=forget_acc,retain_acc,test_acc,gap,relearn_acc -->
    | method       | forget | retain | test   | gap    | relearn |
    |--------------|--------|--------|--------|--------|---------|
    | oracle       |  0.000 |  0.901 |  0.793 |  0.000 |  0.000  |
    | original     |  0.900 |  0.891 |  0.749 |  0.318 |  0.985  |
    | finetune     |  0.040 |  0.909 |  0.775 |  0.022 |  0.691  |
    | ga           |  0.780 |  0.892 |  0.758 |  0.275 |  0.971  |
    | graddiff     |  0.460 |  0.894 |  0.766 |  0.164 |  0.882  |
    | npo          |  0.020 |  0.852 |  0.742 |  0.040 |  0.603  |
    | random_label |  0.210 |  0.911 |  0.793 |  0.073 |  0.853  |
    | ssd          |  0.040 |  0.689 |  0.657 |  0.129 |  0.662  |
    | gu-ga        |  0.780 |  0.881 |  0.751 |  0.280 |  0.971  |
    | gu-graddiff  |  0.510 |  0.889 |  0.773 |  0.181 |  0.926  |
    | gu-npo       |  0.050 |  0.838 |  0.718 |  0.063 |  0.735  |
    | iau          |  0.240 |  0.890 |  0.782 |  0.087 |  0.824  |

Writes runs/unlearn-class[-tiny]/{results.json, forget_vs_retain.png, relearn.png} and <out>/cache.

--size accel: CIFAR-10 (32x32x3, 10 classes, every training and test example; $JAXCL_DATA/cifar10
in the image-folder layout, or the hub: not on this machine, so a run without it stops with one
line naming where to put it), ResNet-18 width 64 in bf16, original and oracle 20000 steps of 256,
unlearning 100 steps of 256, 8 seeds (one per chip).
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile unlearn-class --size accel --target tpu-v5e-8 --set methods=ga

    <!-- results: results/compile/unlearn-class-cifar10-resnet18-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | train the original | 1893.9 | 11.6 | 1235.0 | 25.82 |
    | train the oracle | 1820.6 | 11.1 | 1235.0 | 25.73 |
    | ga (100 steps) | 1520.9 | 9.3 | 1712.8 | 18.14 |
    | ga: one step | 1035.2 | 6.3 | 745.0 | 12.77 |
"""

# unlearning learning rates for the ResNet (IAU keeps the reference 1e-3)
RESNET_LR = {
    "finetune": 1e-3,
    "ga": 2e-5,
    "graddiff": 1e-5,
    "npo": 2e-5,
    "random_label": 1e-4,
    "gu-ga": 2e-5,
    "gu-graddiff": 5e-5,
    "gu-npo": 2e-5,
}


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    if size == "accel":  # CIFAR-10, ResNet-18 (width 64), every example, 8 seeds (one per v5e chip)
        cfg = get_config()
        cfg.update(
            data={
                "dataset": "cifar10",
                "forget_class": 3,
                "scenario": "full-class",
                "n_per_class": 0,
                "n_test": 0,
            },
            model={"name": "resnet18", "resnet18": {"width": 64}, "compute_dtype": "bfloat16"},
            train={"steps": 20000, "lr": 1e-3, "batch_size": 256, "eval_every": 1000},
            unlearn={"steps": 100, "batch_size": 256, "eval_every": 20, "eval_size": 1000},
            eval={"eval_cap": 2000, "relearn_steps": 20, "relearn_every": 5, "relearn_n": 256},
            seeds=8,
        )
        return cfg
    cfg = {
        "study": "unlearn-class",
        "data": {"forget_class": 3, "scenario": "full-class", "n_per_class": 500, "n_test": 1000},
        "model": {"name": "resnet18", "resnet18": {"width": 16}},
        "train": {"steps": 500, "lr": 1e-3, "batch_size": 64, "eval_every": 50},
        "unlearn": {"steps": 15, "batch_size": 64, "eval_every": 5},
        "eval": {"eval_cap": 400, "relearn_steps": 10, "relearn_every": 5, "relearn_n": 64},
        "seeds": 1,
        **{m: {"lr": lr} for m, lr in RESNET_LR.items()},
    }
    if tiny:  # MLP 784-128-64-10; its learning rates are the registry defaults
        cfg.update(
            data={"forget_class": 3, "scenario": "full-class", "n_per_class": 100, "n_test": 500},
            model={"name": "mlp", "mlp": {"hidden": (128, 64)}},
            train={"steps": 150, "lr": 1e-3, "batch_size": 64, "eval_every": 50},
            eval={"eval_cap": 300, "relearn_steps": 10, "relearn_every": 5, "relearn_n": 32},
            iau={"max_examples": 600},
        )
        for m in RESNET_LR:
            del cfg[m]
    return cfg
