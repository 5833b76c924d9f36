"""One LPD training iteration as the official runner computes it (docs/lpd.md#training), meta-learning and
fine-tuning.

Forward (every network in train mode): the identity encoder embeds the K identity frames of each video
(BatchNorm over all B·K frames) and averages them (skipped once fine-tuned: the generator's own identity
vector replaces it); the pose encoder embeds the augmented pose frame; the generator renders (masked RGB,
mask); the discriminator's projection table is normalised (one power iteration) and the video's rows
taken; the discriminator runs three times, in the reference's order: on the fake (generator loss), on the
detached fake with detached rows (its own loss) and on the real target, each call one more power
iteration of its spectral norms.

Update: the generator-side optimiser (embedder + generator at meta-learning, the generator and its identity
vector when fine-tuning) steps on the sum of the generator terms; the discriminator-side one (network +
table) on the hinge loss of the same forward. The reference runs two backward passes and zeroes the
generator loss's discriminator gradients; here one gradient of the sum gives the same: the discriminator's
parameters and rows enter the generator terms only through stopped copies. Then an exponential moving
average (EMA) of the embedder and generator parameters (their buffers copied).
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from bilayer_jax.families.lpd import losses
from bilayer_jax.models import vgg
from bilayer_jax.models.lpd import networks
from bilayer_jax.models.lpd.config import LPDConfig

Array = jax.Array
GENERATOR_SIDE = {'meta': ('embedder', 'generator'), 'finetune': ('generator',)}
DISCRIMINATOR_SIDE = ('discriminator', 'table')
EMA_NETWORKS = ('embedder', 'generator')


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The official settings (configs/default.yaml, train.py and criterion defaults); `finetuning()` gives
  configs/finetuning-base.yaml's."""
  model: LPDConfig = LPDConfig()
  vgg19: vgg.VGGSpec = vgg.LPD_VGG19
  vggface: vgg.VGGSpec = vgg.LPD_VGGFACE
  perceptual_weight: float = 3e-2
  vggface_weight: float = 0.6e-2
  vggface_crop: float = 1 / 1.8
  lpips_vgg16_weight: float = 0.0  # offline stand-in for both (demo configs)
  feature_matching_weight: float = 10.0
  dis_embed_weight: float = 1e-2
  dice_weight: float = 1.0
  dice_real_channels: int = 3
  optimizer: str = 'adam'  # 'adam' | 'radam' (the official code's own RAdam)
  generator_lr: float = 5e-5
  discriminator_lr: float = 2e-4
  b1: float = 0.0
  b2: float = 0.999
  eps: float = 1e-5
  ema_decay: float = 0.999
  stage: str = 'meta'  # 'meta' | 'finetune'
  # The trainer's view (bilayer_jax.families.base.Training): what it trains, rows of the projection table
  # (the training split's examples, padded to a multiple of the devices).
  networks_to_train: Tuple[str, ...] = ('embedder', 'generator', 'discriminator')
  generator_train_modes: Tuple[str, ...] = ()  # no standing statistics (the official has none)
  num_video_rows: int = 0
  seed: int = 0  # the pose encoder's dropout draws from it and the step number

  @property
  def perceptual_terms(self) -> Tuple[Tuple[str, vgg.VGGSpec, float, bool], ...]:
    """(loss name, network, weight, on the central crop) of each perceptual term in use."""
    terms = (('VGG', self.vgg19, self.perceptual_weight, False), ('VGGFace', self.vggface, self.vggface_weight, True),
             ('LPIPS_VGG16', vgg.FSTH_VGG16_LPIPS, self.lpips_vgg16_weight, False))
    return tuple(term for term in terms if term[2])

  def finetuning(self) -> 'StepConfig':
    return dataclasses.replace(self, stage='finetune', optimizer='radam', generator_lr=5e-4, discriminator_lr=8e-4,
                               dis_embed_weight=0.0, ema_decay=0.972)


def _call(module, variables, *args, train: bool, method=None, rngs=None, **kwargs):
  """(output, variables updated by the call): train-mode calls update BatchNorm statistics and spectral
  vectors."""
  if not train:
    return module.apply(variables, *args, train=False, method=method, **kwargs), variables
  out, updated = module.apply(variables, *args, train=True, method=method, rngs=rngs,
                              mutable=['batch_stats', 'spectral'], **kwargs)
  return out, {**variables, **updated}


def forward(cfg: StepConfig, params: Mapping[str, Any], state: Mapping[str, Any], batch: Mapping[str, Array],
            train: bool = True, dropout_keep: Optional[Array] = None, rng: Optional[Array] = None):
  """The networks' outputs on one batch and the variables' non-parameter state after the calls.

  params/state: per network ('embedder', 'generator', 'discriminator', 'table') the 'params' collection and
  the others. batch: 'identity_frames' (B, K, H, W, 3), 'pose_frames', 'target' (B, H, W, 3; target =
  frame x mask), 'labels' (B,) rows of the table. Returns (outputs, state).
  """
  m, finetuned = cfg.model, cfg.stage == 'finetune'
  var = {net: {**state[net], 'params': params[net]} for net in params}
  embedder, out = networks.Embedder(m), {}
  identity = None
  if not finetuned:
    (out['identity_each'], identity), var['embedder'] = _call(embedder, var['embedder'], batch['identity_frames'],
                                                              train=train, method=embedder.identity)
  rngs = None if rng is None else {'dropout': rng}
  out['pose'], var['embedder'] = _call(embedder, var['embedder'], batch['pose_frames'], train=train,
                                       method=embedder.pose, rngs=rngs, dropout_keep=dropout_keep)
  out['identity'] = identity
  (out['fake'], out['fake_mask']), var['generator'] = _call(networks.Generator(m, finetuned), var['generator'],
                                                            identity, out['pose'], train=train)
  table_eps = m.mlp_spectral_eps if finetuned else m.spectral_eps  # a fresh spectral_norm when fine-tuning
  out['projection'], var['table'] = _call(networks.EmbeddingTable(*_table_shape(params['table']), table_eps),
                                          var['table'], batch['labels'], train=train)
  disc = networks.Discriminator(m)
  frozen = {**var['discriminator'], 'params': jax.lax.stop_gradient(params['discriminator'])}
  (out['fake_score_g'], out['fake_features']), frozen = _call(disc, frozen, out['fake'],
                                                              jax.lax.stop_gradient(out['projection']), train=train)
  var['discriminator'] = {**frozen, 'params': params['discriminator']}
  (out['fake_score_d'], _), var['discriminator'] = _call(disc, var['discriminator'],
                                                         jax.lax.stop_gradient(out['fake']),
                                                         jax.lax.stop_gradient(out['projection']), train=train)
  (out['real_score'], out['real_features']), var['discriminator'] = _call(disc, var['discriminator'],
                                                                         batch['target'], out['projection'],
                                                                         train=train)
  return out, {net: {k: v for k, v in variables.items() if k != 'params'} for net, variables in var.items()}


def _table_shape(table_params: Mapping[str, Array]) -> Tuple[int, int]:
  return tuple(table_params['embedding'].shape)


def loss_terms(cfg: StepConfig, out: Mapping[str, Any], perceptual: Mapping[str, Any],
               batch: Mapping[str, Array]) -> Dict[str, Array]:
  """Every term by the official criterion's name; 'loss_g' and 'loss_d' are their sums."""
  crop = lambda x: losses.center_crop_resize(x, cfg.vggface_crop)
  terms = {
      'adversarial_G': losses.adversarial_generator(out['fake_score_g']),
      'feature_matching': losses.feature_matching(out['fake_features'], out['real_features'],
                                                  cfg.feature_matching_weight),
      'segmentation_dice': cfg.dice_weight * losses.dice(out['fake_mask'], batch['target_mask'],
                                                         cfg.dice_real_channels),
  }
  for name, spec, weight, cropped in cfg.perceptual_terms:
    fake, real = (crop(out['fake']), crop(batch['target'])) if cropped else (out['fake'], batch['target'])
    terms[name] = losses.perceptual(spec, perceptual[spec.name], fake, real, weight)
  if cfg.dis_embed_weight and cfg.stage == 'meta':
    terms['embedding_matching'] = losses.dis_embed(out['identity_each'][:, 0], out['projection'],
                                                   cfg.dis_embed_weight)
  terms['loss_g'] = sum(terms.values())
  terms['adversarial_D'] = terms['loss_d'] = losses.hinge_discriminator(out['real_score'], out['fake_score_d'])
  return terms


def reference_radam(lr: float, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """The official code's RAdam (utils/radam.py, degenerated_to_sgd): until the variance is tractable
  (rho < 5) a bias-corrected momentum step; then the rectified step with eps added to sqrt(v), not to
  sqrt(v / (1 - b2^t)) as optax.radam does."""
  rho_max = 2 / (1 - b2) - 1

  def init(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {'count': jnp.zeros((), jnp.int32), 'mu': zeros, 'nu': zeros}

  def update(grads, state, params=None):
    del params
    t = state['count'] + 1
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state['mu'], grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state['nu'], grads)
    tf = jnp.asarray(t, float)  # float64 when x64 is on (the parity tests' float64 iteration)
    b2t = b2 ** tf
    rho = rho_max - 2 * tf * b2t / (1 - b2t)
    rectified = rho >= 5
    safe_rho = jnp.where(rectified, rho, 5.0)
    factor = jnp.sqrt((1 - b2t) * (safe_rho - 4) / (rho_max - 4) * (safe_rho - 2) / safe_rho * rho_max / (rho_max - 2))
    step = jnp.where(rectified, factor, 1.0) / (1 - b1 ** tf)
    updates = jax.tree_util.tree_map(
        lambda m, v: -lr * step * jnp.where(rectified, m / (jnp.sqrt(v) + eps), m), mu, nu)
    return updates, {'count': t, 'mu': mu, 'nu': nu}

  return optax.GradientTransformation(init, update)


def optimizers(cfg: StepConfig) -> Dict[str, optax.GradientTransformation]:
  """{'generator', 'discriminator'}: the two sides' optimisers (betas (0, 0.999), eps 1e-5)."""
  make = reference_radam if cfg.optimizer == 'radam' else lambda lr, b1, b2, eps: optax.adam(lr, b1, b2, eps)
  return {'generator': make(cfg.generator_lr, cfg.b1, cfg.b2, cfg.eps),
          'discriminator': make(cfg.discriminator_lr, cfg.b1, cfg.b2, cfg.eps)}


def trained_networks(cfg: StepConfig) -> Dict[str, str]:
  """{network: side} of the networks an iteration updates: each has its own optimiser state, with its
  side's settings (Adam and RAdam are elementwise, so this is one optimiser per side)."""
  return {**{net: 'generator' for net in GENERATOR_SIDE[cfg.stage]},
          **{net: 'discriminator' for net in DISCRIMINATOR_SIDE}}


def init_opt_state(cfg: StepConfig, params: Mapping[str, Any]) -> Dict[str, Any]:
  txs = optimizers(cfg)
  return {net: txs[side].init(params[net]) for net, side in trained_networks(cfg).items()}


def ema_update(decay: float, ema: Mapping[str, Any], params: Mapping[str, Any],
               state: Mapping[str, Any]) -> Dict[str, Any]:
  """EMA of the embedder's and generator's parameters; their other variables copied (as buffers are)."""
  new = {}
  for net in EMA_NETWORKS:
    averaged = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema[net]['params'], params[net])
    new[net] = {**state[net], 'params': averaged}
  return new


def iteration(cfg: StepConfig, params: Mapping[str, Any], state: Mapping[str, Any], ema: Mapping[str, Any],
              opt_state: Mapping[str, Any], perceptual: Mapping[str, Any], batch: Mapping[str, Array],
              dropout_keep: Optional[Array] = None, rng: Optional[Array] = None):
  """One training iteration; returns (params, state, ema, opt_state, metrics with the loss terms, the
  outputs and the gradients by network)."""
  sides = trained_networks(cfg)
  trained = {net: params[net] for net in sides}
  fixed = {net: value for net, value in params.items() if net not in sides}

  def total(trained_params):
    out, new_state = forward(cfg, {**fixed, **trained_params}, state, batch, True, dropout_keep, rng)
    terms = loss_terms(cfg, out, perceptual, batch)
    return terms['loss_g'] + terms['loss_d'], (terms, out, new_state)

  (_, (terms, out, new_state)), grads = jax.value_and_grad(total, has_aux=True)(trained)
  txs, new_opt, new_params = optimizers(cfg), {}, dict(params)
  for net, side in sides.items():
    updates, new_opt[net] = txs[side].update(grads[net], opt_state[net], trained[net])
    new_params[net] = optax.apply_updates(trained[net], updates)
  new_ema = ema_update(cfg.ema_decay, ema, new_params, new_state)
  metrics = {**terms, 'outputs': out, 'grads': grads}
  return new_params, new_state, new_ema, new_opt, metrics


def identity_vector(cfg: StepConfig, embedder_variables: Mapping[str, Any], frames: Array) -> Array:
  """(1, identity_dim): the mean identity vector of (N, H, W, 3) frames of one person (eval mode), what
  fine-tuning starts from; the official code uses the embedder's EMA."""
  embedder = networks.Embedder(cfg.model)
  each, _ = embedder.apply(embedder_variables, frames[None], train=False, method=embedder.identity)
  return jnp.mean(each[0], axis=0, keepdims=True)


def finetune_init(cfg: StepConfig, params: Mapping[str, Any], state: Mapping[str, Any], ema: Mapping[str, Any],
                  identity: Array, rng: Array):
  """Meta-learned (params, state, ema) -> fine-tuning's: the generator and its EMA get the trainable
  `identity_embedding` = `identity` (1, D); the projection table becomes that one row with fresh spectral
  vectors (random unit u, v, not yet iterated, as a new `spectral_norm`)."""
  d = cfg.model.identity_dim
  u_key, v_key = jax.random.split(rng)
  unit = lambda key, n: (lambda x: x / jnp.linalg.norm(x))(jax.random.normal(key, (n,)))
  params = {**params, 'generator': {**params['generator'], 'identity_embedding': identity},
            'table': {'embedding': identity}}
  state = {**state, 'table': {'spectral': {'u': unit(u_key, 1), 'v': unit(v_key, d)}}}
  ema = {**ema, 'generator': {**ema['generator'], 'params': {**ema['generator']['params'],
                                                             'identity_embedding': identity}}}
  return params, state, ema
