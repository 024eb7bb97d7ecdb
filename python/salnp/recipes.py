"""Training options shared by ``python -m salnp train`` (and anything else that takes the
same options, e.g. sweep configs): their defaults, the named recipes, and how the three
combine.

    args = salnp.recipes.resolve(vars(parsed_args))     # or a plain dict of options

Precedence: an option the user gives explicitly > the recipe's value > the default.
"Explicitly" means present and not None: the parser's defaults are all None, so an option
typed on the command line always wins over ``--recipe``, even when it equals the default.

Recipes:
- ``paper``: the SAL authors' CIFAR-10 configuration (Boukli Hacene et al., released code;
  DESIGN sections 2 and 6): SAL-ResNet-20 of width 83 (0.98 M parameters, 129 M MACs in
  the paper's convention), CIFAR-10, 300 epochs, SGD momentum 0.9, batch 128, weight decay
  5e-4, lr 0.1 / 0.01 / 0.001 at epochs 0 / 100 / 200, beta 20 -> 70 geometric per step,
  all training data.
- ``asl``: Jeon & Kim's CIFAR-10 solver (their prototxts): ASNet-20 [16 x 1] (layer
  "asl"), 64k iterations of batch 128 (164 epochs of 50,000 images), Nesterov momentum
  0.9, weight decay 5e-4, lr 0.1 x 0.1 at iterations 32k and 48k (epochs 82 and 123).
  Their inputs are globally contrast-normalised; ours use the per-channel normalisation
  of DESIGN 5.
"""
from __future__ import annotations

import argparse

__all__ = ["DEFAULTS", "RECIPES", "DATASETS", "add_train_options", "resolve"]

DATASETS = ("fashion-mnist", "cifar10", "cifar100")

DEFAULTS = dict(
    data="fashion-mnist", depth=20, width=16, layer="sal", expansion=1.0, epochs=10,
    subset=0, test_subset=0, batch_size=128, lr=0.1, lr_schedule="step", milestones=None,
    momentum=0.9, nesterov=None, weight_decay=5e-4, beta0=20.0, beta1=70.0,
    beta_schedule="geometric", seed=0)

RECIPES = {
    "paper": dict(data="cifar10", layer="sal", width=83, depth=20, epochs=300,
                  milestones=[100, 200], lr=0.1, lr_schedule="step", batch_size=128,
                  momentum=0.9, weight_decay=5e-4, beta0=20.0, beta1=70.0,
                  beta_schedule="geometric", subset=0, test_subset=0),
    "asl": dict(data="cifar10", layer="asl", width=16, depth=20, expansion=1.0, epochs=164,
                milestones=[82, 123], lr=0.1, lr_schedule="step", batch_size=128,
                momentum=0.9, nesterov=True, weight_decay=5e-4, subset=0, test_subset=0),
}


def _int_list(text):
    """"2,4,6" -> [2, 4, 6] (argparse type)"""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _num_list(text):
    """"100,200" -> [100, 200]; "0.5,0.75" -> [0.5, 0.75] (argparse type)"""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
    return [int(v) if v.is_integer() and v >= 1 else v for v in vals]


def add_train_options(t: argparse.ArgumentParser) -> None:
    """The training options, every default None (resolve() fills them in)."""
    d = DEFAULTS
    t.add_argument("--data", choices=DATASETS, default=None, help=f"default {d['data']}")
    t.add_argument("--root", default=None, help="data folder (default for fashion-mnist: "
                   "the Debian package's /usr/share/datasets/fashion-mnist)")
    t.add_argument("--depth", type=int, default=None, help=f"default {d['depth']}")
    t.add_argument("--width", type=int, default=None, help=f"default {d['width']}")
    t.add_argument("--layer", choices=("sal", "cl", "sl", "asl", "asl-post"), default=None,
                   help="default sal; asl = Jeon & Kim's pre-activation ASNet, asl-post = "
                        "a post-activation ASL block")
    t.add_argument("--shared", action="store_true", help="SAL: one shift per input channel")
    t.add_argument("--expansion", type=float, default=None, help="SL/ASL block expansion e "
                   "(default 1)")
    t.add_argument("--epochs", type=int, default=None, help=f"default {d['epochs']}")
    t.add_argument("--subset", type=int, default=None,
                   help="train on N class-balanced images (default 0: all)")
    t.add_argument("--test-subset", type=int, default=None, help="evaluate on N images "
                   "(default 0: all)")
    t.add_argument("--batch-size", type=int, default=None, help=f"default {d['batch_size']}")
    t.add_argument("--lr", type=float, default=None, help=f"default {d['lr']}")
    t.add_argument("--lr-schedule", choices=("step", "cosine", "constant"), default=None,
                   help="default step")
    t.add_argument("--milestones", type=_num_list, default=None,
                   help="step schedule: lr x 0.1 at these epochs (numbers >= 1) or fractions "
                        "of the run (< 1), e.g. 100,200 (default: the layer family's "
                        "solver, salnp.models.SOLVERS: 1/3, 2/3; ASL 1/2, 3/4)")
    t.add_argument("--momentum", type=float, default=None, help=f"default {d['momentum']}")
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (default: the layer family's solver; ASL yes)")
    t.add_argument("--weight-decay", type=float, default=None,
                   help=f"default {d['weight_decay']}")
    t.add_argument("--beta0", type=float, default=None,
                   help="SAL inverse temperature at start (default 20)")
    t.add_argument("--beta1", type=float, default=None, help="... and at the end (default 70)")
    t.add_argument("--beta-schedule", choices=("geometric", "linear", "cosine"), default=None,
                   help="default geometric")
    t.add_argument("--prune-epochs", type=_int_list, default=None,
                   help="SAL stepwise hard pruning (salnp's extension, not the paper's "
                        "method): comma-separated epochs (from 1) before which every slice "
                        "keeps only its most likely positions, e.g. 2,4,6,8 (use with "
                        "--beta1 equal to --beta0 for a pure stepwise schedule)")
    t.add_argument("--prune-keep", type=_int_list, default=None,
                   help="positions kept after each prune step, e.g. 5,3,2,1 (default: about "
                        "9^(1 - j/steps), ending at 1)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="paper: the SAL authors' CIFAR-10 configuration (width 83, 300 "
                        "epochs, lr 0.1/0.01/0.001 at epochs 0/100/200, batch 128, wd 5e-4, "
                        "beta 20 -> 70, all data); asl: Jeon & Kim's ASNet solver.  Options "
                        "given explicitly override the recipe")


def resolve(options):
    """Fill the unset (None or missing) options of an argparse Namespace or a dict from the
    recipe (``options["recipe"]``) and then DEFAULTS; returns the same kind of object."""
    is_ns = isinstance(options, argparse.Namespace)
    opts = dict(vars(options) if is_ns else options)
    recipe = opts.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}: must be one of {sorted(RECIPES)}")
    for src in (RECIPES.get(recipe, {}), DEFAULTS):
        for k, v in src.items():
            if opts.get(k) is None:
                opts[k] = list(v) if isinstance(v, list) else v
    return argparse.Namespace(**opts) if is_ns else opts
