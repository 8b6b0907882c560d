"""The standard CelebA protocol at 64 px (GMI / KEDMI / LOMMA / PLG-MI and the defenses that test on it).

One recipe for every network, attack and table of the protocol; ``what`` says which, and each ``what`` takes only
the arguments it depends on (ARG_SETS lists every valid combination):

  what=target,target=vgg16|ir152|facenet64                       -> ClassifierConfig   runs/celeba_<target>
  what=eval                                                       -> ClassifierConfig   runs/celeba_facenet112
  what=defense,method=<defense>,target=<target>                   -> DefendConfig       runs/celeba_<target>_<method>
  what=gan,public=celeba|ffhq|facescrub                           -> GANExperimentConfig runs/celeba_gan_<public>
  what=gan_kedmi|gan_plg,target=..,defense=..,public=..           -> GANExperimentConfig
                                                    runs/celeba_gan_kedmi_<target>[_<defense>]_<public> (gan_plg alike)
  what=surrogate,student=efficientnet_b0|b1|b2,target=..,defense=..,public=..   -> SurrogateConfig
                                                    runs/celeba_surrogate_<target>[_<defense>]_<student>_<public>
  what=attack,method=gmi|kedmi|gmi_lomma|kedmi_lomma|plg,target=..,defense=none|<defense>,public=..  -> AttackConfig
  what=table,table=gmi|kedmi|lomma|plg|defenses,public=..         -> ProtocolConfig (bin/jaxmi protocol)

Each is the command its class goes with (a model workdir made once, shared by every table that uses it):

  bin/jaxmi train-classifier --config configs/protocol.py:what=target,target=vgg16 --workdir runs/celeba_vgg16
  bin/jaxmi train-classifier --config configs/protocol.py:what=eval --workdir runs/celeba_facenet112
  bin/jaxmi defend --config configs/protocol.py:what=defense,method=bido,target=vgg16 --workdir runs/celeba_vgg16_bido
  bin/jaxmi train-gan --config configs/protocol.py:what=gan,public=celeba --workdir runs/celeba_gan_celeba
  bin/jaxmi train-gan --config configs/protocol.py:what=gan_kedmi,target=vgg16,defense=none,public=celeba \
      --workdir runs/celeba_gan_kedmi_vgg16_celeba
  bin/jaxmi distill --config configs/protocol.py:what=surrogate,student=efficientnet_b0,target=vgg16,defense=none,\
public=celeba --workdir runs/celeba_surrogate_vgg16_efficientnet_b0_celeba
  bin/jaxmi protocol --config configs/protocol.py:what=table,table=lomma,public=celeba \
      --workdir runs/protocol_lomma_celeba

``bin/jaxmi protocol`` makes whatever a table needs that runs/ does not hold yet (with these recipes) and uses what
it holds: the published networks imported with ``bin/jaxmi import-torch`` into the same names (README, "Reproducing
the papers"). The papers started their targets from pretrained backbones (ImageNet VGG16-BN, MS-Celeb-1M IR-152 /
IR-50) that jaxmi does not ship: trained here, the targets start from random weights, so importing the published
checkpoints is the way to the papers' numbers.

Data (jaxmi.data.protocol): CelebA's 1000 private identities from trainset.txt / testset.txt, crop (55, 35, 108, 108)
then 64 px (112 for the evaluation model), RGB in [0, 1]; the public set is ganset.txt (public=celeba), FFHQ's
thumbnails (public=ffhq) or FaceScrub (public=facescrub). Targets and the evaluation model never see a public image;
GANs and surrogates never see a private one.

Recipes (attacks.md 1-5, defenses.md 1-4; Re-thinking_MI config/celeba/*.json):
  targets: SGD 1e-2, momentum 0.9, wd 1e-4, batch 64, flips; VGG16 50 epochs (x0.2 at 20, 35), IR-152 40 and
    FaceNet64 50 epochs (x0.1 every 10). evaluation: FaceNet (IR-50) at 112 px, 30 epochs (x0.1 at 15, 25). The
    released parameters are the best private-test epoch's (release=best_test), as the reference keeps.
  GANs: GMI's WGAN-GP and KEDMI's inversion-specific GAN at full width (z 100, 64 px RGB, base width 64), Adam 2e-4
    (0.5, 0.999), batch 64, 5 critic steps, 120 epochs (KEDMI's and LOMMA's; GMI's own ran 280:
    gan_overrides=train.epochs=280). PLG-MI's conditional GAN: z 128, hinge loss, Adam 2e-4 (0.0, 0.9), 30 pseudo-
    labelled images per class, ~30,000 generator steps.
  surrogates (LOMMA): EfficientNet-B0/B1/B2 distilled from the target on the public set, SGD 0.01, momentum 0.9,
    wd 1e-4, 20 epochs, batch 64, T = 1 (the reference's StepLR(20) never fires in 20 epochs: constant).
  attacks: identities 0-299, per-latent gradients scaled as a batch mean over 60 (reference_batch=60). GMI 5 restarts
    x 1500 Nesterov steps (lr 0.02, momentum 0.9, lambda 100, z clipped to [-1, 1]); KEDMI one distribution per
    identity, Adam 0.02, 2400 steps, 5 draws; GMI+LOMMA / KEDMI+LOMMA 2400 steps, logit loss + p_reg (lambda 1)
    over the target and its three surrogates; PLG-MI Adam 0.1, 600 steps, 5 restarts, max-margin on 2 views.
  defenses (CelebA, 64 px): BiDO-HSIC (0.05, 0.5) (IR-152: MIBench's (0.05, 2)), Adam 1e-4, 50 epochs; MID
    beta 0.003, SGD 1e-2 constant; TL-DMI fine-tunes after public pretraining on FaceScrub (the reference's labelled
    public option; its ImageNet / MS-Celeb-1M starts are not shipped), freezing VGG16's first 8 of 13 convs,
    IR-152's stem + 47 of 50 units, FaceNet64's stem + 6 units, no scheduler; CALoR low-rank tanh head (r 40), then
    5 epochs of the inverse focal loss (gamma 8); NLS alpha -0.05 with the reference's schedule, Adam 1e-3, 100
    epochs, batch 128, x0.1 at 75, 90; DP-SGD C 1, sigma 0.01 (the reference's; epsilon is reported), SGD 3e-2,
    200 epochs, GroupNorm; Trap-MID alpha 0.02, beta 0.2, trigger step 0.01, the target's SGD recipe.

Tables (what=table): the rows each paper reports, each run with the attack's own settings unless the paper ran its
baselines otherwise:
  gmi: GMI on VGG16, IR-152, FaceNet64 (Zhang et al., CVPR 2020).
  kedmi: GMI and KEDMI on the three targets (Chen et al., ICCV 2021).
  lomma: GMI, GMI+LOMMA, KEDMI, KEDMI+LOMMA on the three targets, all 2400 steps (Nguyen et al., CVPR 2023).
  plg: GMI, KEDMI and PLG-MI on the three targets (Yuan et al., AAAI 2023).
  defenses: every defense on VGG16 (and the undefended VGG16) against all five attacks.
"""

import dataclasses
import importlib.util
import itertools
import typing
from pathlib import Path

from jaxmi import config as config_lib
from jaxmi.attacks import InversionConfig
from jaxmi.data import DataConfig
from jaxmi.defenses import DPSGD, MID, BiDO, ConfidenceAdaptation, NegativeLabelSmoothing, TransferLearning, TrapMID
from jaxmi.errors import ConfigError
from jaxmi.experiments.attack import AttackConfig
from jaxmi.experiments.defend import DefendConfig
from jaxmi.experiments.protocol import ProtocolConfig
from jaxmi.nets import ModelConfig
from jaxmi.nets.gan import GANConfig
from jaxmi.train import AugmentConfig, ClassifierConfig, OptimConfig, TrainConfig
from jaxmi.train.distill import SurrogateConfig
from jaxmi.train.gan import GANExperimentConfig, GANTrainConfig, PLGConfig


def _attack_recipe():
  """configs/attack.py as a module: its INVERSION / LOMMA tables are the methods' settings, shared, not copied."""
  spec = importlib.util.spec_from_file_location("jaxmi_recipe_attack", Path(__file__).with_name("attack.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ATTACK = _attack_recipe()

TARGETS = ("vgg16", "ir152", "facenet64")
PUBLICS = ("celeba", "ffhq", "facescrub")
STUDENTS = ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2")
DEFENSES = ("bido", "mid", "tl_dmi", "calor", "nls", "dp_sgd", "trap_mid")
METHODS = tuple(ATTACK.METHODS)  # gmi, gmi_lomma, kedmi, kedmi_lomma, plg
TABLES = ("gmi", "kedmi", "lomma", "plg", "defenses")

# The arguments each `what` takes, with their choices.
T = typing.Literal
WHAT = {
  "target": {"target": T[TARGETS]},
  "eval": {},
  "defense": {"method": T[DEFENSES], "target": T[TARGETS]},
  "gan": {"public": T[PUBLICS]},
  "gan_kedmi": {"target": T[TARGETS], "defense": T[("none", *DEFENSES)], "public": T[PUBLICS]},
  "gan_plg": {"target": T[TARGETS], "defense": T[("none", *DEFENSES)], "public": T[PUBLICS]},
  "surrogate": {
    "student": T[STUDENTS],
    "target": T[TARGETS],
    "defense": T[("none", *DEFENSES)],
    "public": T[PUBLICS],
  },
  "attack": {"method": T[METHODS], "target": T[TARGETS], "defense": T[("none", *DEFENSES)], "public": T[PUBLICS]},
  "table": {"table": T[TABLES], "public": T[PUBLICS]},
}
ARGS = {"what": T[tuple(WHAT)]}


def _arg_sets() -> tuple[str, ...]:
  """Every valid argument: each `what` with the product of its arguments' choices, except that the attacks,
  GANs and surrogates of defended targets are listed for VGG16 with the CelebA public set (the defense tables'
  setting; the other combinations are built by the same code)."""
  out = []
  for what, spec in WHAT.items():
    keys = list(spec)
    for combo in itertools.product(*(typing.get_args(spec[k]) for k in keys)):
      values = dict(zip(keys, combo))
      defended = values.get("defense", "none") != "none"
      if defended and (values["target"], values["public"]) != ("vgg16", "celeba"):
        continue
      out.append(",".join([f"what={what}", *(f"{k}={v}" for k, v in values.items())]))
  return tuple(out)


# --- data -------------------------------------------------------------------------------------------------------

PUBLIC_DATASET = {"celeba": "", "ffhq": "ffhq", "facescrub": "facescrub"}


def data(public: str = "celeba", image_size: int = 64) -> DataConfig:
  """CelebA's private split from its files (all 1000 identities) and the public set; 64 px RGB."""
  return DataConfig(
    dataset="celeba",
    image_size=image_size,
    channels=3,
    private_ids=(),
    public_ids=(),
    public_dataset=PUBLIC_DATASET[public],
  )


# --- classifiers ----------------------------------------------------------------------------------------------

# target -> (arch, epochs, lr decay epochs, decay factor): Re-thinking_MI config/celeba/training_classifiers.
TARGET_RECIPES = {
  "vgg16": ("vgg16", 50, (20, 35), 0.2),
  "ir152": ("ir152_64", 40, (10, 20, 30), 0.1),
  "facenet64": ("facenet64", 50, (10, 20, 30, 40), 0.1),
}
FLIPS = AugmentConfig(hflip=True, max_shift=0)


def _sgd(decay_epochs=(), factor=0.1, lr=1e-2, weight_decay=1e-4) -> OptimConfig:
  schedule = "step" if decay_epochs else "constant"
  return OptimConfig(
    name="sgd",
    learning_rate=lr,
    momentum=0.9,
    weight_decay=weight_decay,
    schedule=schedule,
    decay_epochs=tuple(decay_epochs),
    decay_factor=factor,
  )


def target(name: str) -> ClassifierConfig:
  arch, epochs, decay, factor = TARGET_RECIPES[name]
  return ClassifierConfig(
    name=f"celeba_{name}",
    role="target",
    data=data(),
    model=ModelConfig(arch=arch),
    optim=_sgd(decay, factor),
    # best_test: the reference keeps the best private-test epoch (its checkpoints are named by that accuracy).
    train=TrainConfig(epochs=epochs, batch_size=64, seed=0, augment=FLIPS, release="best_test"),
  )


def evaluator() -> ClassifierConfig:
  """FaceNet (IR-50) at 112 px, an independent model (seed 1) on the same private identities."""
  return ClassifierConfig(
    name="celeba_facenet112",
    role="evaluation",
    data=data(image_size=112),
    model=ModelConfig(arch="facenet112"),
    optim=_sgd((15, 25), 0.1),
    train=TrainConfig(epochs=30, batch_size=64, seed=1, augment=FLIPS, release="best_test"),
  )


# --- defenses -----------------------------------------------------------------------------------------------------


def _train(cfg: ClassifierConfig, **changes) -> ClassifierConfig:
  return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


def bido(t: ClassifierConfig, arch: str) -> DefendConfig:
  """BiDO-HSIC (Peng et al., KDD 2022; BiDO/train_HSIC.py): Adam 1e-4, 50 epochs (its MultiStepLR at 60 never fires)."""
  lambda_y = 2.0 if arch == "ir152" else 0.5  # MIBench's IR-152 recipe; the released VGG16 trade-off elsewhere
  t = dataclasses.replace(t, optim=OptimConfig(name="adam", learning_rate=1e-4, weight_decay=1e-4, schedule="constant"))
  return DefendConfig(target=_train(t, epochs=50), defense=BiDO(measure="hsic", lambda_x=0.05, lambda_y=lambda_y))


def mid(t: ClassifierConfig, arch: str) -> DefendConfig:
  """MID (Wang et al., AAAI 2021): VIB head (k = feature size / 2), beta 0.003, SGD 1e-2 without a scheduler."""
  t = dataclasses.replace(t, model=dataclasses.replace(t.model, head="vib"), optim=_sgd())
  return DefendConfig(target=t, defense=MID(beta=0.003))


# arch -> (lr, epochs, batch, frozen layers) of TL-DMI's recipe (train_classifier.py; defenses.md 2.2). Frozen layers
# in jaxmi's count (jaxmi.defenses.tl_dmi): VGG16 freeze_layers=26 = conv1_1..conv4_1 (8 convs); IR-152
# freeze_layers=46 = body units 0..46 and the stem (its typo'd stem freeze fixed): 48; FaceNet64 freeze_layers=5 =
# units 0..5 and the stem: 7.
TL_DMI = {"vgg16": (8e-2, 200, 64, 8), "ir152": (1e-2, 100, 64, 48), "facenet64": (8e-3, 200, 8, 7)}


def tl_dmi(t: ClassifierConfig, arch: str) -> DefendConfig:
  """TL-DMI (Ho et al., CVPR 2024): pretrain on FaceScrub's 530 public identities (<workdir>/pretrain), freeze the
  first layers, fine-tune the rest on the private data: SGD, no scheduler."""
  lr, epochs, batch, frozen = TL_DMI[arch]
  public = DataConfig(dataset="facescrub", image_size=64, channels=3, private_ids=tuple(range(530)), public_ids=())
  pretrain = dataclasses.replace(t, name=f"{t.name}_facescrub", data=public)
  t = _train(dataclasses.replace(t, optim=_sgd(lr=lr)), epochs=epochs, batch_size=batch)
  return DefendConfig(target=t, pretrain=pretrain, pretrain_on="public", defense=TransferLearning(frozen_layers=frozen))


def calor(t: ClassifierConfig, arch: str) -> DefendConfig:
  """CALoR: the low-rank tanh head (r = 40) trained with the target's recipe, then 5 epochs of confidence adaptation
  (inverse focal loss, gamma 8, alpha 0.25; ca_ft.py: SGD 2e-5, momentum 0.9, x0.1 at 3 and 4, flips only)."""
  low_rank = dataclasses.replace(
    t,
    name=f"{t.name}_lowrank",
    model=dataclasses.replace(t.model, head="low_rank", head_rank=40, head_activation="tanh"),
  )
  finetune = _train(
    dataclasses.replace(low_rank, name=t.name, optim=_sgd((3, 4), 0.1, lr=2e-5, weight_decay=0.0)), epochs=5
  )
  return DefendConfig(
    target=finetune, pretrain=low_rank, pretrain_on="private", defense=ConfidenceAdaptation(gamma=8.0, alpha=0.25)
  )


def nls(t: ClassifierConfig, arch: str) -> DefendConfig:
  """Negative label smoothing, alpha -0.05 on the reference schedule, with Trap-MID's CelebA recipe
  (classify_trap_negls.json): Adam 1e-3, no weight decay, 100 epochs, batch 128, x0.1 at 75 and 90."""
  optim = OptimConfig(name="adam", learning_rate=1e-3, weight_decay=0.0, schedule="step", decay_epochs=(75, 90))
  t = _train(dataclasses.replace(t, optim=optim), epochs=100, batch_size=128)
  return DefendConfig(target=t, defense=NegativeLabelSmoothing(alpha=-0.05))


def dp_sgd(t: ClassifierConfig, arch: str) -> DefendConfig:
  """DP-SGD (mi-defense gmi/target/dp_training.py): clip 1, the reference's sigma 0.01, SGD 3e-2, 200 epochs;
  GroupNorm, since BatchNorm mixes examples."""
  t = dataclasses.replace(t, model=dataclasses.replace(t.model, norm="group"), optim=_sgd(lr=3e-2))
  return DefendConfig(target=_train(t, epochs=200), defense=DPSGD(l2_clip=1.0, noise_multiplier=0.01, delta=1e-5))


def trap_mid(t: ClassifierConfig, arch: str) -> DefendConfig:
  """Trap-MID (config/celeba/classify_trap.json): alpha 0.02, beta 0.2, trigger step 0.01; SGD 1e-2 without a
  scheduler, 50 epochs (IR-152: 40), batch 64."""
  t = dataclasses.replace(t, optim=_sgd())
  return DefendConfig(target=t, defense=TrapMID(alpha=0.02, beta=0.2, step_size=0.01))


DEFENSE_RECIPES = {
  "bido": bido,
  "mid": mid,
  "tl_dmi": tl_dmi,
  "calor": calor,
  "nls": nls,
  "dp_sgd": dp_sgd,
  "trap_mid": trap_mid,
}


def defended(method: str, arch: str) -> DefendConfig:
  cfg = DEFENSE_RECIPES[method](target(arch), arch)
  return dataclasses.replace(cfg, target=dataclasses.replace(cfg.target, name=f"celeba_{arch}_{method}"))


def target_name(arch: str, defense: str = "none") -> str:
  """The target's workdir name: celeba_<arch>, or celeba_<arch>_<defense> for a defended one."""
  return f"celeba_{arch}" + ("" if defense == "none" else f"_{defense}")


# --- GANs and surrogates --------------------------------------------------------------------------------------------

FULL_GAN = GANConfig(z_dim=100, base_width=64, stages=4, channels=3)
GAN_TRAIN = GANTrainConfig(epochs=120, batch_size=64, n_critic=5, gp_weight=10.0, learning_rate=2e-4)
PLG_GAN = GANConfig(z_dim=128, base_width=64, stages=4, channels=3, upsample="bilinear")
# 30 images x 1000 classes = 30,000 pseudo-labelled images: (30000 // 64) // 5 = 93 generator steps per epoch, so
# 323 epochs are the reference's 30,000 generator iterations.
PLG_TRAIN = GANTrainConfig(
  epochs=323, batch_size=64, n_critic=5, learning_rate=2e-4, beta1=0.0, beta2=0.9, checkpoint_every=500
)


def gan(public: str) -> GANExperimentConfig:
  return GANExperimentConfig(name=f"celeba_gan_{public}", kind="gmi", data=data(public), gan=FULL_GAN, train=GAN_TRAIN)


def gan_kedmi(arch: str, defense: str, public: str) -> GANExperimentConfig:
  t = target_name(arch, defense)
  return GANExperimentConfig(
    name=f"celeba_gan_kedmi_{t.removeprefix('celeba_')}_{public}",
    kind="kedmi",
    target=f"runs/{t}",
    data=data(public),
    gan=FULL_GAN,
    train=GAN_TRAIN,
  )


def gan_plg(arch: str, defense: str, public: str) -> GANExperimentConfig:
  t = target_name(arch, defense)
  return GANExperimentConfig(
    name=f"celeba_gan_plg_{t.removeprefix('celeba_')}_{public}",
    kind="plg",
    target=f"runs/{t}",
    data=data(public),
    gan=PLG_GAN,
    train=PLG_TRAIN,
    plg=PLGConfig(top_n=30, inv_weight=0.2),
  )


def surrogate(student: str, arch: str, defense: str, public: str) -> SurrogateConfig:
  t = target_name(arch, defense)
  return SurrogateConfig(
    teacher=f"runs/{t}",
    temperature=1.0,
    holdout_fraction=0.1,
    student=ClassifierConfig(
      name=f"celeba_surrogate_{t.removeprefix('celeba_')}_{student}_{public}",
      role="surrogate",
      data=data(public),
      model=ModelConfig(arch=student),
      optim=_sgd(lr=0.01),
      train=TrainConfig(epochs=20, batch_size=64, seed=1),
    ),
  )


# --- attacks and tables -----------------------------------------------------------------------------------------

LEARNING_RATE = {"gmi": 0.02, "kedmi": 0.02, "plg": 0.1}  # GMI's and LOMMA's celeba settings, KEDMI's, PLG-MI's
LOMMA_STEPS = 2400  # LOMMA's iters_mi, for both of its paths
IDENTITIES = tuple(range(300))  # 5 batches of 60


def attack(method: str, arch: str, defense: str, public: str) -> AttackConfig:
  kind, lomma = ATTACK.METHODS[method]
  inversion: InversionConfig = dataclasses.replace(ATTACK.INVERSION[kind], learning_rate=LEARNING_RATE[kind])
  if lomma:
    inversion = dataclasses.replace(inversion, steps=LOMMA_STEPS, **ATTACK.LOMMA, **ATTACK.LOMMA_CLAMP[kind])
  t = target_name(arch, defense)
  gans = {
    "gmi": gan(public).name,
    "kedmi": gan_kedmi(arch, defense, public).name,
    "plg": gan_plg(arch, defense, public).name,
  }
  return AttackConfig(
    name=f"{method}_{t}_{public}",
    attack=kind,
    target=f"runs/{t}",
    evaluator=f"runs/{evaluator().name}",
    gan=f"runs/{gans[kind]}",
    identities=IDENTITIES,
    surrogates=tuple(f"runs/{surrogate(s, arch, defense, public).student.name}" for s in STUDENTS) if lomma else (),
    inversion=inversion,
  )


# table -> (targets, attacks, steps for every attack (0 = each attack's own))
TABLE_ROWS = {
  "gmi": (TARGETS, ("gmi",), 0),
  "kedmi": (TARGETS, ("gmi", "kedmi"), 0),
  "lomma": (TARGETS, ("gmi", "gmi_lomma", "kedmi", "kedmi_lomma"), LOMMA_STEPS),
  "plg": (TARGETS, ("gmi", "kedmi", "plg"), 0),
  "defenses": (("vgg16", *(f"vgg16_{d}" for d in DEFENSES)), METHODS, 0),
}


def table(name: str, public: str) -> ProtocolConfig:
  targets, attacks, steps = TABLE_ROWS[name]
  return ProtocolConfig(
    name=f"protocol_{name}_{public}",
    recipe=str(Path(__file__).resolve()),
    public=public,
    data=data(public),
    targets=targets,
    attacks=attacks,
    steps=steps,
  )


def cell(entry: str, method: str, public: str) -> tuple[str, dict[str, str]]:
  """One cell of a table (bin/jaxmi protocol): the attack's argument and {runs/<name>: the argument that makes it}
  for every network the attack can read. ``entry``: vgg16 | ir152 | facenet64, or <target>_<defense>."""
  arch, _, defense = entry.partition("_")
  defense = defense or "none"
  if arch not in TARGETS or defense not in ("none", *DEFENSES):
    raise ConfigError(
      f"targets: '{entry}': expected one of {', '.join(TARGETS)}, or one of them _<defense> with a defense of "
      f"{', '.join(DEFENSES)} (e.g. vgg16_bido)"
    )
  if method not in METHODS:
    raise ConfigError(f"attacks: '{method}': expected one of {', '.join(METHODS)}")
  rest = f"target={arch},defense={defense},public={public}"
  makes = {
    target_name(arch, defense): f"what=target,target={arch}"
    if defense == "none"
    else f"what=defense,method={defense},target={arch}",
    evaluator().name: "what=eval",
    gan(public).name: f"what=gan,public={public}",
    gan_kedmi(arch, defense, public).name: f"what=gan_kedmi,{rest}",
    gan_plg(arch, defense, public).name: f"what=gan_plg,{rest}",
    **{surrogate(s, arch, defense, public).student.name: f"what=surrogate,student={s},{rest}" for s in STUDENTS},
  }
  return f"what=attack,method={method},{rest}", {f"runs/{name}": arg for name, arg in makes.items()}


BUILD = {
  "target": lambda a: target(a["target"]),
  "eval": lambda a: evaluator(),
  "defense": lambda a: defended(a["method"], a["target"]),
  "gan": lambda a: gan(a["public"]),
  "gan_kedmi": lambda a: gan_kedmi(a["target"], a["defense"], a["public"]),
  "gan_plg": lambda a: gan_plg(a["target"], a["defense"], a["public"]),
  "surrogate": lambda a: surrogate(a["student"], a["target"], a["defense"], a["public"]),
  "attack": lambda a: attack(a["method"], a["target"], a["defense"], a["public"]),
  "table": lambda a: table(a["table"], a["public"]),
}
ARG_SETS = _arg_sets()


def _what(arg: str | None) -> str:
  """The value of `what=`, read first because it decides the other arguments; a missing or unknown one is
  parse_arg's error (naming the choices)."""
  for item in (arg or "").split(","):
    key, _, value = (t.strip() for t in item.partition("="))
    if key == "what":
      config_lib.parse_arg(f"what={value}", **ARGS)  # an unknown value raises with the choices
      return value
  config_lib.parse_arg("", **ARGS)  # raises: missing argument 'what'
  raise AssertionError("unreachable")


def get_config(arg: str | None = None):
  what = _what(arg)
  values = config_lib.parse_arg(arg, what=T[(what,)], **WHAT[what])  # the usage names this what's arguments
  return BUILD[what](values)
