"""Main job: class-incremental Split-Fashion-MNIST (5 tasks x 2 classes).

    jaxcl run split-fashion-mnist                                  # this config
    jaxcl run split-fashion-mnist --tiny                           # seconds; what the tests run
    jaxcl run split-fashion-mnist --set er.replay_fraction=0.3 --set methods=er,lwf,agem
    jaxcl sweep split-fashion-mnist --grid er.lr=1e-3,3e-3 --grid er.replay_fraction=0.25,0.5

Methods: fine-tune (lower bound), ER (reservoir replay, 1000 examples, half of every batch),
EWC (online, empirical Fisher, lambda 1000) and joint training (upper bound); MLP 784-256-256-10,
Adam 1e-3, batch 64, 200 steps per task; 5 seeds in one program per method; accuracy on 1000
held-out test examples of every task evaluated every 2 steps inside the compiled loop.

Expected runtime: about 2.5 minutes on an idle 2-core CPU including compilation (--tiny: ~15 s);
9.4 min with another job sharing the cores (results/studies/split-fashion-mnist.json).
Expected result (5 seeds, mean ± std; the measured table is in the README and in
results/studies/split-fashion-mnist.json): ACC fine-tune ~20% (it forgets all but the last
task), EWC ~20% (EWC does not help in class-incremental learning; van de Ven et al., 2022),
ER ~79%, joint ~83%; ER shows a clear stability gap (min-ACC ~11%).
Writes runs/split-fashion-mnist/{results.json, accuracy_matrix.png, stability_gap.png}.

--size accel: the field's benchmark at its scale, for an accelerator: class-incremental Split
CIFAR-100 (10 tasks x 10 classes, the hub's copy or $JAXCL_DATA/cifar100), ResNet-18 (width 64),
batch 32, 2000 steps per task, a 2000-example ER buffer, 64 seeds in one program (seeds over the
mesh). `jaxcl compile split-fashion-mnist --size accel --target tpu-v5e-8` gives its memory per
chip and the compiler's estimate (results/compile/, the README's table).
"""

from jaxcl.studies.cl import tiny as tiny_variant


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    if size == "accel":  # the field's standard benchmark at its scale: Split CIFAR-100, ResNet-18
        return {
            "study": "cl",
            "data": {"dataset": "cifar100", "scenario": "class-incremental", "n_tasks": 10},
            "model": {"name": "resnet18", "resnet18": {"width": 64}},
            "loop": {"steps_per_task": 2000, "batch_size": 32, "eval_every": 100, "eval_per_task": 1000},
            "er": {"capacity": 2000},
            "methods": ("finetune", "er", "ewc", "joint"),
            "seeds": 64,
        }
    cfg = {
        "study": "cl",
        "data": {"dataset": "fashion-mnist", "scenario": "class-incremental", "n_tasks": 5},
        "model": {"name": "mlp", "mlp": {"hidden": (256, 256)}},
        "loop": {"steps_per_task": 200, "batch_size": 64, "eval_every": 2, "eval_per_task": 1000},
        "methods": ("finetune", "er", "ewc", "joint"),
        "seeds": 5,
    }
    return tiny_variant(cfg) if tiny else cfg
