"""One run's whole configuration: ``salnp.RunConfig``.

    cfg = salnp.RunConfig(layer="cl", width=8, epochs=2, subset=1000)
    cfg = salnp.RunConfig.make({"layer": "sal", "recipe": "paper", "epochs": 3})  # recipe + overrides
    salnp.runs.train_run(cfg, "runs/x")          # what `python -m salnp train` runs

Every option of ``python -m salnp train`` is a field here; the field's metadata carries
its help, its group and its choices, and the command line's parser is generated from them
(salnp.cli), so the parser, the recipes (salnp.recipes: partial configs), the sweep grids
(salnp.sweep: a RunConfig or a dict of its fields per trial), the runs and fit's defaults
all read one source.  A config is validated once, when it is made: a wrong value raises a
ValueError naming the field and its rule, a misspelt key one naming the nearest field.

Precedence in ``RunConfig.make(options)``: an option given (present and not None) > the
recipe's value (``options["recipe"]``) > the field's default.

The layer family's reference solver fills what is left at None: ``milestones`` and
``nesterov`` (``solver_of(layer)``; sources in salnp.recipes).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field

from .models import LAYERS
from .recipes import DATASETS, FAMILY_SOLVERS, RECIPES

__all__ = ["RunConfig", "ConfigError", "DEFAULT_ROOTS", "solver_of", "FIELD_GROUPS"]

DEFAULT_ROOTS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}   # the Debian package
FIELD_GROUPS = ("model", "data", "solver", "SAL", "run")


class ConfigError(ValueError):
    """A configuration mistake (a value, a key, a missing root): one line names it."""


def _f(default, help, group, choices=None, flag=None, identity=True, label=False):
    """A field with its help text, group (the --help section), choices and command-line
    form: flag "no" makes a True-default bool --no-X, "tristate" --X/--no-X."""
    return field(default=default, metadata=dict(help=help, group=group, choices=choices,
                                                flag=flag, identity=identity, label=label))


def solver_of(layer: str) -> dict:
    """The layer family's reference solver (nesterov, milestones), salnp.recipes."""
    return {k: v for k, v in FAMILY_SOLVERS[layer].items() if k != "source"}


@dataclass
class RunConfig:
    """The configuration of one training run (see the module docstring)."""

    # ---- model
    layer: str = _f("sal", "layer family: sal (Shift Attention Layer), cl (3x3 convolutions), "
                    "sl (fixed shifts, Wu et al.), asl (active shifts, Jeon & Kim's "
                    "pre-activation ASNet), asl-post (a post-activation active-shift block)",
                    "model", LAYERS)
    depth: int = _f(20, "ResNet depth 6n+2: 20, 32, 44, 56, 110", "model")
    width: int = _f(16, "channels of the first stage (the stages have w, 2w, 4w); the SAL "
                    "authors' networks use 83", "model")
    shared: bool = _f(False, "SAL: one shift per input channel (shift + 1x1 convolution) "
                      "instead of one per kernel slice", "model")
    expansion: float = _f(1.0, "SL / ASL: the block's expansion e (middle channels = e x the "
                          "stage width)", "model")
    # ---- data
    data: str = _f("fashion-mnist", "data set", "data", DATASETS)
    root: str = _f(None, "data folder; fashion-mnist: the Debian package's "
                   "/usr/share/datasets/fashion-mnist by default; cifar10 / cifar100: the "
                   "folder holding data_batch_*.bin (.xz, .gz) or the python pickles", "data")
    subset: int = _f(0, "train on this many class-balanced images (0: all)", "data")
    test_subset: int = _f(0, "evaluate on this many images (0: all)", "data")
    augment: bool = _f(True, "random crop (padding 4) and horizontal flip of the training "
                       "images", "data", flag="no")
    # ---- solver
    epochs: int = _f(10, "passes over the training images", "solver")
    batch_size: int = _f(128, "images per SGD step", "solver")
    lr: float = _f(0.1, "initial learning rate", "solver")
    lr_schedule: str = _f("step", "step: x 0.1 at the milestones; cosine: to 0 over the run; "
                          "constant", "solver", ("step", "cosine", "constant"))
    milestones: tuple = _f(None, "step schedule: epochs (numbers >= 1) or fractions of the run "
                           "(< 1) where lr is multiplied by 0.1, e.g. 100,200 or 0.5,0.75; "
                           "default: the layer family's reference solver (SAL and CL 1/3, 2/3; "
                           "SL and ASL 1/2, 3/4)", "solver")
    momentum: float = _f(0.9, "SGD momentum", "solver")
    nesterov: bool = _f(None, "Nesterov momentum (default: the layer family's: ASL yes, the "
                        "others no)", "solver", flag="tristate")
    weight_decay: float = _f(5e-4, "L2 weight decay (not on ASL's BN, FC bias and shifts)",
                             "solver")
    reset_momentum: bool = _f(False, "start every epoch with zero momentum, as the SAL "
                              "authors' code does (it makes a new optimiser per epoch)",
                              "solver")
    checkpointing: str = _f(None, "keep fewer activations: backward recomputes the inside of "
                            "each residual block (blocks) or stage (stages) instead; bit for bit "
                            "the same results, about one more forward per step", "solver",
                            ("blocks", "stages"))
    # ---- SAL
    beta0: float = _f(20.0, "SAL inverse temperature at the start", "SAL")
    beta1: float = _f(70.0, "SAL inverse temperature at the end", "SAL")
    beta_schedule: str = _f("geometric", "how beta goes from beta0 to beta1 over the steps",
                            "SAL", ("geometric", "linear", "cosine"))
    prune_epochs: tuple = _f(None, "stepwise hard pruning (salnp's extension, not the paper's "
                             "method): epochs (from 1) before which every slice keeps only its "
                             "most likely positions, e.g. 2,4,6,8", "SAL")
    prune_keep: tuple = _f(None, "positions kept after each prune step, e.g. 5,3,2,1 (default: "
                           "about 9^(1 - j/steps), ending at 1)", "SAL")
    tap_threshold: float = _f(None, "SAL training computes only the taps whose attention p >= "
                              "t x the slice's largest; default 2^-27: the skipped taps cannot "
                              "change a float32 result; 0: every tap (the dense convolution)",
                              "SAL")
    freeze_attention: bool = _f(False, "SAL: keep the attention logits at their initial values "
                                "(learning rate 0, no weight decay on them), a control for "
                                "whether the learned attention matters", "SAL")
    # ---- run
    seed: int = _f(0, "seed of the initial weights, the data order and the augmentation",
                   "run")
    recipe: str = _f(None, "a published configuration (salnp.recipes): paper = the SAL "
                     "authors' CIFAR-10 run, asl = Jeon & Kim's ASNet solver; options given "
                     "explicitly override it", "run", tuple(RECIPES))
    name: str = _f(None, "a label for tables and plots (sweeps)", "run", identity=False,
                   label=True)
    out: str = _f(None, "output folder: summary.json, history.json, checkpoint.npz, "
                  "inference.npz, curves.png, attention.png, train.log", "run", identity=False)
    resume: str = _f(None, "continue from DIR/checkpoint.npz (or a checkpoint path)", "run",
                     identity=False)
    eval_every: int = _f(1, "evaluate on the test set every N epochs and after the last one "
                         "(evaluation does not change the training)", "run", identity=False)
    threads: int = _f(None, "threads of libsal (default: the CPUs this process may use)",
                      "run", identity=False)
    progress: bool = _f(True, "progress bars", "run", flag="no", identity=False)

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check(f, getattr(self, f.name)))
        if self.root is None:
            self.root = DEFAULT_ROOTS.get(self.data)
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ConfigError(f"depth={self.depth}: must be 6n+2 (20, 32, 44, 56, 110)")
        if self.shared and self.layer != "sal":
            raise ConfigError(f"shared=True: applies to layer='sal' only, not {self.layer!r}")
        if self.freeze_attention and self.layer != "sal":
            raise ConfigError(f"freeze_attention=True: applies to layer='sal' only, not "
                              f"{self.layer!r}")
        if self.beta_schedule == "geometric":   # every beta of the schedule finite and > 0
            for t in (0.0, 1.0):
                b = self.beta0 * (self.beta1 / self.beta0) ** t
                if not (math.isfinite(b) and b > 0):
                    raise ConfigError(f"beta0={self.beta0!r} beta1={self.beta1!r}: the schedule "
                                      "leaves the finite positive numbers")
        if self.prune_keep is not None and self.prune_epochs is None:
            raise ConfigError("prune_keep: needs prune_epochs")

    @classmethod
    def make(cls, options=None, **kwargs) -> "RunConfig":
        """A config from a dict of options (dashes or underscores) and keywords: explicit
        values > the recipe's > the defaults.  ConfigError naming a misspelt key (with the
        nearest field), a key given twice, or a bad value."""
        given = {}
        for src in (options or {}), kwargs:
            if isinstance(src, RunConfig):
                src = src.to_dict()
            if not isinstance(src, dict):
                raise ConfigError(f"a config must be a dict of RunConfig fields, got "
                                  f"{type(src).__name__}")
            for key, v in src.items():
                k = cls.field_name(key)
                if k in given:
                    raise ConfigError(f"config key {key!r}: given twice (as {given[k][0]!r} "
                                      f"and {key!r})")
                given[k] = (key, v)
        values = {k: v for k, (_, v) in given.items() if v is not None}
        recipe = values.get("recipe")
        if recipe is not None:
            if recipe not in RECIPES:
                raise ConfigError(f"recipe={recipe!r}: must be one of {', '.join(RECIPES)}")
            for k, v in RECIPES[recipe].items():
                if k != "source":
                    values.setdefault(k, v)
        return cls(**values)

    @staticmethod
    def field_name(key) -> str:
        """The field a config key names (dashes as underscores); ConfigError naming the
        nearest field when there is none."""
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r}: must be a string")
        k = key.replace("-", "_")
        if k not in _FIELDS:
            near = difflib.get_close_matches(k, _FIELDS, n=1, cutoff=0.6)
            raise ConfigError(f"config key {key!r}: not a field of RunConfig"
                              + (f"; did you mean {near[0]!r}?" if near else
                                 f"; fields: {', '.join(_FIELDS)}"))
        return k

    def replace(self, **changes) -> "RunConfig":
        """A copy with changes (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-able dict of every field (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def identity(self) -> dict:
        """The fields that make a run what it is: those that differ from the defaults, plus
        root (labels and how-to-run fields excluded).  A field added later with a default
        leaves existing identities unchanged."""
        d = self.to_dict()
        return {k: d[k] for k in _IDENTITY if k == "root" or d[k] != _DEFAULTS[k]}

    def solver(self) -> dict:
        """(nesterov, milestones) with the layer family's values where the config says None."""
        fam = solver_of(self.layer)
        return dict(nesterov=fam["nesterov"] if self.nesterov is None else self.nesterov,
                    milestones=tuple(fam["milestones"] if self.milestones is None
                                     else self.milestones))

    def require_root(self) -> str:
        """root, or ConfigError when this data set has no default folder."""
        if self.root is None:
            raise ConfigError(f"root: required for data={self.data!r} (the folder with the "
                              "data files)")
        return self.root


_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
_IDENTITY = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata["identity"])
_DEFAULTS = {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
             for f in dataclasses.fields(RunConfig)}

_INTS = {"depth": 1, "width": 1, "epochs": 1, "eval_every": 1, "batch_size": 1, "subset": 0, "test_subset": 0,
         "seed": 0, "threads": 1}
_POSITIVE = ("lr", "expansion")
_NONNEG = ("momentum", "weight_decay")
_BETAS = ("beta0", "beta1")
_UNIT = ("tap_threshold",)


def _check(f, v):
    """The value of field f, checked (and normalised: tuples for lists, floats for numbers)."""
    name, meta = f.name, f.metadata
    if v is None:
        if f.default is None:
            return None
        raise ConfigError(f"{name}=None: must be a value (default {f.default!r})")
    if meta["choices"] is not None:
        if v not in meta["choices"]:
            raise ConfigError(f"{name}={v!r}: must be one of {', '.join(map(str, meta['choices']))}")
        return v
    if isinstance(f.default, bool) or name == "nesterov":
        if not isinstance(v, bool):
            raise ConfigError(f"{name}={v!r}: must be True or False")
        return v
    if name in _INTS:
        if isinstance(v, bool) or not isinstance(v, int) and not (
                isinstance(v, float) and v.is_integer()):
            raise ConfigError(f"{name}={v!r}: must be an integer")
        v = int(v)
        if v < _INTS[name] or v > 2**31:
            raise ConfigError(f"{name}={v}: must be an integer in [{_INTS[name]}, 2**31]")
        if name == "width" and v > 2**24:
            raise ConfigError(f"width={v}: must be <= 2**24")
        return v
    if name in _POSITIVE + _NONNEG + _BETAS:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name}={v!r}: must be a number")
        v = float(v)
        low_ok = v > 0 if name in _POSITIVE + _BETAS else v >= 0
        if not (math.isfinite(v) and low_ok):
            raise ConfigError(f"{name}={v!r}: must be finite and {'> 0' if name in _POSITIVE + _BETAS else '>= 0'}")
        if name == "expansion" and v > 1024:
            raise ConfigError(f"expansion={v}: must be <= 1024")
        return v
    if name in _UNIT:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name}={v!r}: must be a number")
        v = float(v)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ConfigError(f"{name}={v!r}: must be finite and in [0, 1] (above 1 it would "
                              "drop the largest tap)")
        return v
    if name in ("milestones", "prune_epochs", "prune_keep"):
        if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
            raise ConfigError(f"{name}={v!r}: must be a list of numbers")
        items = list(v)
        if not items or any(isinstance(x, (bool, str, bytes)) or not isinstance(x, (int, float))
                            for x in items):
            raise ConfigError(f"{name}={v!r}: must be a non-empty list of numbers")
        if name == "milestones":
            if not all(math.isfinite(x) and x > 0 for x in items):
                raise ConfigError(f"milestones={v!r}: must be positive numbers (epochs >= 1 or "
                                  "fractions < 1 of the run)")
            return tuple(int(x) if float(x).is_integer() and x >= 1 else float(x) for x in items)
        if not all(float(x).is_integer() and x >= 1 for x in items):
            raise ConfigError(f"{name}={v!r}: must be integers >= 1")
        return tuple(int(x) for x in items)
    if name in ("root", "out", "resume", "name"):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{name}={v!r}: must be a non-empty string")
        return v
    return v
