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
- sl: plain momentum, lr x 0.1 at 1/2 and 3/4 (Wu et al.'s shift code decays at epochs 81
  and 122 of 164);
- asl: Nesterov, 1/2 and 3/4 (Jeon & Kim: iterations 32k and 48k of 64k);
- asl-post: as SL's block, plain momentum, 1/2 and 3/4.
"""
from __future__ import annotations

__all__ = ["DATASETS", "RECIPES", "FAMILY_SOLVERS"]

DATASETS = ("fashion-mnist", "cifar10", "cifar100")

FAMILY_SOLVERS = {
    "cl": dict(nesterov=False, milestones=(1 / 3, 2 / 3),
               source="the SAL recipe's schedule (epochs 100 and 200 of 300)"),
    "sal": dict(nesterov=False, milestones=(1 / 3, 2 / 3),
                source="github.com/eghouti/SAL: lr 0.1 / 0.01 / 0.001 at epochs 0 / 100 / 200 of 300"),
    "sl": dict(nesterov=False, milestones=(1 / 2, 3 / 4),
               source="Wu et al.'s shift code (github.com/alvinwan/shiftresnet-cifar): "
                      "lr x 0.1 at epochs 81 and 122 of 164"),
    "asl": dict(nesterov=True, milestones=(1 / 2, 3 / 4),
                source="github.com/jyh2986/Active-Shift, models/ASL_Model/CIFAR10/"
                       "[16xE]solver.prototxt: Nesterov, steps at iterations 32k and 48k of 64k"),
    "asl-post": dict(nesterov=False, milestones=(1 / 2, 3 / 4),
                     source="salnp's post-activation ASL block, trained as SL's"),
}

RECIPES = {
    "paper": dict(data="cifar10", layer="sal", width=83, depth=20, epochs=300,
                  milestones=(100, 200), lr=0.1, lr_schedule="step", batch_size=128,
                  momentum=0.9, weight_decay=5e-4, beta0=20.0, beta1=70.0,
                  beta_schedule="geometric", subset=0, test_subset=0, reset_momentum=True,
                  source="github.com/eghouti/SAL (the released training script: SGD "
                         "momentum 0.9, weight decay 5e-4, batch 128, 300 epochs, lr steps at "
                         "100 and 200, beta 20 -> 70, a new optimiser every epoch)"),
    "asl": dict(data="cifar10", layer="asl", width=16, depth=20, expansion=1.0, epochs=164,
                milestones=(82, 123), lr=0.1, lr_schedule="step", batch_size=128,
                momentum=0.9, nesterov=True, weight_decay=5e-4, subset=0, test_subset=0,
                source="github.com/jyh2986/Active-Shift, models/ASL_Model/CIFAR10/"
                       "[16xE]solver.prototxt"),
}
