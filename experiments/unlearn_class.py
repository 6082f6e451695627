"""Class unlearning on Fashion-MNIST: SSD, GU and IAU against the baselines and the oracle.

    jaxcl run unlearn-class                              # this study from the command line
    python experiments/unlearn_class.py [--tiny] [--seeds N] [--method ssd --method gu-npo ...]
        [--forget-class 3] [--scenario full-class|sub-class|random] [--model resnet18|vit|cnn|mlp]

An original ResNet-18 (28x28 variant, width 8, pure BatchNorm: batch statistics in training,
recalibrated running statistics afterwards) is trained once on 2000 training examples (200 per
class, Adam 1e-3, 250 steps of 64), then every method unlearns class 3 (dress) from it: oracle
(retrain on the retain set), fine-tune, GA, GradDiff, NPO (beta 0.1), random labels, SSD
(alpha 10, lambda 1), GU on GA / GradDiff / NPO (rank 8, per tensor), IAU (one Adam step);
20 unlearning steps each, every method vmapped over the seeds in one compiled program.
Metrics: forget / retain / test accuracy and the mean gap to the oracle, a loss/entropy
membership-inference attack (fraction of forget examples called members), linear CKA of
penultimate features on forget examples to the original and the oracle, a linear probe for the
forgotten class on penultimate features, a 10-step relearning attack, wall-clock per method.

Expected runtime: default size ~6-12 minutes on the shared 2-core CPU (mostly compilation and
ResNet training; about 40% of that when the machine is idle), --tiny (MLP 784-128-64-10, 100
examples per class) ~1 minute; a few minutes on a GPU (not measured here).
Expected result (one seed): the oracle has forget accuracy 0 and MIA_f 0, retain ~0.9; SSD,
NPO and fine-tune reach forget accuracy ~0 but SSD costs retain accuracy at alpha 10 on this small
model; GA and GU-GA at the safe learning rate barely forget; every method that is not a retrain
keeps a linear probe accuracy for the forgotten class near the original's (the class is still
linearly decodable from the penultimate features) and relearns faster than the oracle under
the relearning attack: "forgetting" here is mostly in the head.
Writes runs/unlearn-class/{results.json, forget_vs_retain.png, relearn.png}.
"""
import sys

from jaxcl import cli

if __name__ == "__main__":
    sys.exit(cli.main(["run", "unlearn-class", *sys.argv[1:]]))
