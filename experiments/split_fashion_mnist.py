"""Main job: class-incremental Split-Fashion-MNIST (5 tasks x 2 classes).

    jaxcl run split-fashion-mnist            # this study from the command line
    python experiments/split_fashion_mnist.py [--tiny] [--seeds N] [--method er ...]

Methods: fine-tune (lower bound), ER (reservoir replay, 1000 examples, half of every batch),
EWC (online, empirical Fisher, lambda 1000) and joint training (upper bound); MLP 784-256-256-10,
Adam 1e-3, batch 64, 200 steps per task; 5 seeds vmapped into one program per method; accuracy on
1000 held-out test examples of every task evaluated every 2 steps inside the compiled loop.

Expected runtime: about 2.5 minutes on a 2-core CPU including compilation (--tiny: ~15 s);
seconds on a GPU. Expected result (5 seeds, mean ± std): ACC fine-tune ~20% (it forgets all but
the last task), EWC ~20% (EWC does not help in class-incremental learning; see van de Ven et al.,
2022), ER ~79%, joint ~82%; ER shows a clear stability gap (min-ACC ~11% against ACC ~79%).
Writes runs/split-fashion-mnist/{results.json, accuracy_matrix.png, stability_gap.png}.
"""

import sys

from jaxcl import cli

if __name__ == "__main__":
    sys.exit(cli.main(["run", "split-fashion-mnist", *sys.argv[1:]]))
