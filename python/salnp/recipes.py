"""Published configurations as partial run configurations (salnp.RunConfig fields), and each
layer family's reference solver, with their sources.

    salnp.RunConfig.make({"recipe": "paper", "epochs": 3})    # the recipe, epochs overridden

Recipes (``RECIPES[name]``: field values; explicit options override them):
- ``paper``: the SAL authors' CIFAR-10 configuration (Boukli Hacene et al., released code
  github.com/eghouti/SAL; DESIGN sections 2 and 6): SAL-ResNet-20 of width 83 (0.98 M
  parameters, 129 M MACs in the paper's convention), CIFAR-10, 300 epochs, SGD momentum
  0.9, batch 128, weight decay 5e-4, lr 0.1 / 0.01 / 0.001 at epochs 0 / 100 / 200, beta
  20 -> 70 geometric per step, all training data, and a new optimiser (zero momentum)
  every epoch as their training loop builds one.
- ``asl``: Jeon & Kim's CIFAR-10 solver (their prototxts): ASNet-20 [16 x 1] (layer
  "asl"), 64k iterations of batch 128 (164 epochs of 50,000 images), Nesterov momentum
  0.9, weight decay 5e-4, lr 0.1 x 0.1 at iterations 32k and 48k (epochs 82 and 123).
  Their inputs are globally contrast-normalised; ours use the per-channel normalisation
  of DESIGN 5.

Family solvers (``FAMILY_SOLVERS[layer]``: what a run uses for ``nesterov`` and
``milestones`` when its config leaves them at None):
- sal, cl: plain momentum, lr x 0.1 at 1/3 and 2/3 of the run (the SAL recipe's epochs 100
  and 200 of 300);
- sl: plain momentum, lr x 0.1 at 1/2 and 3/4 (Wu et al.'s shift code keeps lr while
  epoch <= 81 and <= 122 (from 0) of 164: the first decayed epochs are 82 and 123, exactly
  1/2 and 3/4 of 164);
- asl: Nesterov, 1/2 and 3/4 (Jeon & Kim: iterations 32k and 48k of 64k);
- asl-post: as SL's block, plain momentum, 1/2 and 3/4.

Sources (every ``source`` string names the file and line): the repositories as read on
2026-12-05 at these commits: github.com/eghouti/SAL 536cbfb (the SAL authors),
github.com/alvinwan/shiftresnet-cifar 289a1a1 (Wu et al.'s CIFAR shift code),
github.com/jyh2986/Active-Shift 9ffc60a (Jeon & Kim).  Both the SAL and the shift code build
a new ``optim.SGD`` every epoch (zero momentum at every epoch start: ``reset_momentum``);
the family solvers leave it off (they set only Nesterov and the milestones), the ``paper``
recipe turns it on.
"""
from __future__ import annotations

__all__ = ["DATASETS", "RECIPES", "FAMILY_SOLVERS"]

DATASETS = ("fashion-mnist", "cifar10", "cifar100")

SAL_REPO = "github.com/eghouti/SAL@536cbfb"
SHIFT_REPO = "github.com/alvinwan/shiftresnet-cifar@289a1a1"
ASL_REPO = "github.com/jyh2986/Active-Shift@9ffc60a"
ASL_SOLVER = "models/ASL_Model/CIFAR10/[16x1]solver.prototxt"

FAMILY_SOLVERS = {
    "cl": dict(nesterov=False, milestones=(1 / 3, 2 / 3),
               source=f"salnp's choice: the SAL recipe's schedule, so that CL and SAL compare "
                      f"on one solver ({SAL_REPO} cifar10/main.py:172-178: lr 0.1 / 0.01 / "
                      "0.001 for epochs < 100 / < 200 / after, of 300 (cifar10/parameters.py:21)); "
                      "He et al.'s own CIFAR ResNets decay at 32k and 48k of 64k iterations "
                      "(1/2, 3/4; arXiv 1512.03385 section 4.2)"),
    "sal": dict(nesterov=False, milestones=(1 / 3, 2 / 3),
                source=f"{SAL_REPO} cifar10/main.py:172-178 (a new optim.SGD(momentum=0.9, "
                       "weight_decay=5e-4) every epoch, lr 0.1 / 0.01 / 0.001 for epochs < 100 "
                       "/ < 200 / after), cifar10/parameters.py:21 (300 epochs)"),
    "sl": dict(nesterov=False, milestones=(1 / 2, 3 / 4),
               source=f"Wu et al.'s shift code, {SHIFT_REPO} main.py:148-154 (lr while epoch "
                      "<= 81, lr/10 while <= 122, then lr/100: the first decayed epochs, from "
                      "0, are 82 and 123 = 1/2 and 3/4 of 164), main.py:159 (a new "
                      "optim.SGD(momentum=0.9, weight_decay=5e-4) every epoch, no Nesterov), "
                      "main.py:221 (164 epochs)"),
    "asl": dict(nesterov=True, milestones=(1 / 2, 3 / 4),
                source=f"{ASL_REPO} {ASL_SOLVER}:5-15 (max_iter 64000, multistep gamma 0.1 at "
                       "stepvalue 32000 and 48000, momentum 0.9, weight_decay 5e-4, type "
                       "Nesterov)"),
    "asl-post": dict(nesterov=False, milestones=(1 / 2, 3 / 4),
                     source=f"salnp's post-activation ASL block, trained as SL's: {SHIFT_REPO} "
                            "main.py:148-154 (decays at 1/2 and 3/4 of 164 epochs), main.py:159 "
                            "(plain momentum)"),
}

RECIPES = {
    "paper": dict(data="cifar10", layer="sal", width=83, depth=20, epochs=300,
                  milestones=(100, 200), lr=0.1, lr_schedule="step", batch_size=128,
                  momentum=0.9, weight_decay=5e-4, beta0=20.0, beta1=70.0,
                  beta_schedule="geometric", subset=0, test_subset=0, reset_momentum=True,
                  source=f"{SAL_REPO}: cifar10/parameters.py:13 (lr 0.1), :15 (feature_maps "
                         "83), :17 (batch 128), :19-20 (temperature 20 -> 70), :21 (300 epochs), "
                         ":29 (geometric factor per step, 391 steps an epoch); cifar10/main.py:"
                         "30-35 (crop 32 with padding 4, flip, normalisation (0.4914, 0.4822, "
                         "0.4465) / (0.2023, 0.1994, 0.2010)), :63 (SATResNet20), :107 (beta "
                         "updated after every step), :172-178 (a new optim.SGD(momentum=0.9, "
                         "weight_decay=5e-4 on net.parameters(), the attention logits too) every "
                         "epoch: lr 0.1 / 0.01 / 0.001 for epochs < 100 / < 200 / after)"),
    "asl": dict(data="cifar10", layer="asl", width=16, depth=20, expansion=1.0, epochs=164,
                milestones=(82, 123), lr=0.1, lr_schedule="step", batch_size=128,
                momentum=0.9, nesterov=True, weight_decay=5e-4, subset=0, test_subset=0,
                source=f"{ASL_REPO} {ASL_SOLVER}:3 (base_lr 0.1), :5-15 (64000 iterations, "
                       "x 0.1 at 32000 and 48000, momentum 0.9, weight_decay 5e-4, Nesterov), "
                       ":26-33 (mirror, crop 32 of the padded, contrast-normalised LMDB, batch "
                       "128), :89-94 (no decay on the BN scale and shift), :166-175 (shift "
                       "lr_mult 0.01, decay_mult 0, normalize: true), :1394-1397 (no decay on "
                       "the FC bias)"),
}
