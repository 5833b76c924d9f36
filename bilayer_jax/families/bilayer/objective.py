"""The bi-layer objective: one training step of either stage, as a pure function (the shared trainer jits and
shards it).

Gradient routing (docs/model.md#gradient-routes). ONE gradient of the sum of all losses w.r.t. the
trained parameters gives exactly the original's routing, because every cross-path is cut in the forward:
  D_ADV          pass 1 on [real; stop_gradient(fake)]        -> discriminator only
  G_ADV, G_FM    pass 2 on [real; fake] with the discriminator's parameters under stop_gradient, real
                 scores of pass 1 and real features detached  -> generator-side networks only
  G_VGG19/Face   LF-detached masked image vs detached real features  -> texture path and uv head
  G_L1           masked LF rgb vs masked target                      -> inference generator LF branch
  G_BCE          segmentation logits vs ground-truth masks           -> segmentation head
  G_WPR          mean |delta uv| (weight 0 in the paper)             -> uv head
Generator and discriminator are updated simultaneously from the same pre-step parameters, each network
with its own Adam, as the original's single backward + `step()` on every optimiser. Unlike the released
code (whose discriminator never receives a gradient, docs/original_bugs.md#the-discriminator-is-never-trained), the
discriminator trains as intended unless `train.train_discriminator` is False.

Networks not in train mode (stage 2's base networks) run frozen: stored BN statistics, no power iteration,
no gradient. The model has no stochastic layer, so the step needs no random key.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from bilayer_jax import losses as L
from bilayer_jax.models import host_init
from bilayer_jax.models import vgg
from bilayer_jax.models.bilayer import BilayerGenerator, discriminator_passes
from bilayer_jax.models.config import BilayerConfig
from bilayer_jax.models.discriminator import Discriminator

Array = jax.Array
State = Dict[str, Any]

PERCEPTUAL_LOSS_NAMES = {'vgg19_imagenet_pytorch': 'G_VGG19', 'vgg16_face_caffe': 'G_VGGFace',
                         'vgg16_imagenet_lpips': 'G_VGG16'}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The loss settings a step is compiled with (docs/model.md#loss-settings); `families/bilayer/setup.py` builds it
  from the run config (`bilayer_jax.config.LossConfig`, which holds the defaults)."""
  adv_pred_type: str
  adv_loss_weight: float
  fem_loss_type: str
  fem_loss_weight: float
  # (perceptual network name, weight) for networks of bilayer_jax.models.vgg.PERCEPTUAL_NETS.
  perceptual: Tuple[Tuple[str, float], ...]
  per_layer_weights: Tuple[float, ...]
  pix_loss_type: str
  pix_loss_weight: float
  seg_loss_weight: float
  wpr_loss_weight: float
  wpr_loss_weight_decay: float
  wpr_loss_decay_schedule: int


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What one step trains and how (static: changing it recompiles); built by `families/bilayer/setup.py`."""
  model: BilayerConfig
  stage: str  # 'base' | 'enhancer'
  networks_to_train: Tuple[str, ...]
  losses: LossConfig
  lrs: Tuple[Tuple[str, float], ...]  # (network, learning rate) of each trained network
  adam_beta1: float
  adam_beta2: float
  adam_eps: float
  inf_apply_masks: bool
  enh_apply_masks: bool
  dtype: Any
  remat: str = 'none'  # REMAT_POLICIES: what the backward pass recomputes instead of storing

  @property
  def enhancer(self) -> bool:
    return self.stage == 'enhancer'

  @property
  def generator_train_modes(self) -> Tuple[str, ...]:
    return tuple(n for n in self.networks_to_train if n != 'discriminator')

  @property
  def fake_key(self) -> str:
    """The images the discriminator and the perceptual loss judge.

    The enhanced image in stage 2: docs/original_bugs.md#the-enhancer-stage-trains-nothing.
    """
    return 'pred_enh_target_imgs' if self.enhancer else 'pred_target_imgs'

  def lr(self, network: str) -> float:
    return dict(self.lrs)[network]


def _save_convolutions(primitive, *args, **params) -> bool:
  del args, params
  return primitive is jax.lax.conv_general_dilated_p


# jax.checkpoint policies around the generator, the discriminator passes and each perceptual network:
# 'none' stores every activation for the backward pass; 'convs' stores only convolution outputs and
# recomputes the rest (normalisations, activations, warps); 'full' stores nothing inside those calls
# (their inputs only) and recomputes each forward. Same losses and gradients (tests/test_remat.py, float64);
# the memory/time trade-off is in docs/benchmarks.md#rematerialisation-2026-12-07.
REMAT_POLICIES = {'none': None, 'convs': _save_convolutions, 'full': jax.checkpoint_policies.nothing_saveable}


def _remat(cfg: StepConfig, fn):
  return fn if cfg.remat == 'none' else jax.checkpoint(fn, policy=REMAT_POLICIES[cfg.remat])


def make_models(cfg: StepConfig) -> Tuple[BilayerGenerator, Discriminator]:
  return (BilayerGenerator(cfg.model, with_enhancer=cfg.enhancer, dtype=cfg.dtype),
          Discriminator(cfg.model, dtype=cfg.dtype))


def make_optimizers(cfg: StepConfig) -> Dict[str, optax.GradientTransformation]:
  """One Adam per trained network (paper: lr 2e-4, betas (0.5, 0.999), eps 1e-7), no decay/clipping/schedule."""
  return {n: optax.adam(cfg.lr(n), b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=cfg.adam_eps)
          for n in cfg.networks_to_train}


def trainable_params(cfg: StepConfig, params: Mapping[str, Any]) -> Dict[str, Any]:
  """{network: params} of the trained networks, out of {'generator': {...}, 'discriminator': ...}."""
  return {n: params['discriminator'] if n == 'discriminator' else params['generator'][n]
          for n in cfg.networks_to_train}


def merge_trainable(params: Mapping[str, Any], trained: Mapping[str, Any]) -> Dict[str, Any]:
  gen = dict(params['generator'])
  gen.update({n: p for n, p in trained.items() if n != 'discriminator'})
  return {'generator': gen, 'discriminator': trained.get('discriminator', params['discriminator'])}


def compute_losses(cfg: StepConfig, state: State, trained: Mapping[str, Any], batch: Mapping[str, Array],
                   perceptual_params: Optional[Mapping[str, Any]] = None):
  """The forward of a training step and all its losses.

  Returns (total, (losses, new_model_state, outputs, discriminator_outputs)).
  """
  gen, disc = make_models(cfg)
  params = merge_trainable(jax.tree_util.tree_map(jax.lax.stop_gradient, state['params']), trained)
  model_state = state['model_state']
  generator = _remat(cfg, lambda variables, inputs: gen.apply(
      variables, inputs, train=cfg.generator_train_modes, inf_apply_masks=cfg.inf_apply_masks,
      enh_apply_masks=cfg.enh_apply_masks, pred_source_data=cfg.enhancer, enhance=cfg.enhancer,
      mutable=['batch_stats', 'spectral']))
  out, gen_state = generator({'params': params['generator'], **model_state['generator']}, batch)
  passes = _remat(cfg, lambda variables, real, fake, stickmen: discriminator_passes(
      disc, variables, real, fake, stickmen, train=True))
  dout, dis_state = passes({'params': params['discriminator'], **model_state['discriminator']},
                           out['target_imgs'], out[cfg.fake_key], batch['target_stickmen'])
  lc = cfg.losses
  # Losses in at least float32: bfloat16 outputs are upcast, a float64 reference run stays float64.
  f32 = lambda x: jax.tree_util.tree_map(lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32)), x)
  losses = {
      'D_ADV': lc.adv_loss_weight * L.adversarial_dis(*f32((dout['real_scores'], dout['fake_scores_dis'])),
                                                      lc.adv_pred_type),
      'G_ADV': lc.adv_loss_weight * L.adversarial_gen(*f32((dout['real_scores'], dout['fake_scores_gen'])),
                                                      lc.adv_pred_type),
      'G_FM': lc.fem_loss_weight * L.feature_matching(f32(dout['real_feats_gen']), f32(dout['fake_feats_gen']),
                                                      lc.fem_loss_type),
  }
  perceptual = [(name, weight) for name, weight in lc.perceptual if weight]
  if perceptual:
    fake = _frames(out[cfg.fake_key + '_lf_detached'])
    real = _frames(out['target_imgs'])
    for name, weight in perceptual:
      if not perceptual_params or name not in perceptual_params:
        raise ValueError(f'perceptual loss {name} is on but its weights were not passed to the step')
      features = _remat(cfg, vgg.VGGFeatures(vgg.PERCEPTUAL_NETS[name]).apply)
      real_feats = features(perceptual_params[name], real)
      fake_feats = features(perceptual_params[name], fake)
      losses[PERCEPTUAL_LOSS_NAMES[name]] = weight * vgg.weighted_feature_l1(fake_feats, real_feats,
                                                                             lc.per_layer_weights)
  losses['G_L1'] = lc.pix_loss_weight * L.pixelwise(
      f32(out['pred_target_delta_lf_rgbs']), f32(out['target_imgs']), lc.pix_loss_type)
  if cfg.model.inf_pred_segmentation:
    losses['G_BCE'] = lc.seg_loss_weight * L.bce_with_logits(f32(out['pred_target_segs_logits']),
                                                             batch['target_segs'])
  if not cfg.enhancer:
    wpr = L.warping_weight(state['step'], lc.wpr_loss_weight, lc.wpr_loss_weight_decay,
                           lc.wpr_loss_decay_schedule, cfg.model.eps)
    losses['G_WPR'] = wpr * L.warping_regularizer(f32(out['pred_target_delta_uvs']))
  total = sum(losses.values())
  new_model_state = {'generator': {**model_state['generator'], **gen_state},
                     'discriminator': {**model_state['discriminator'], **dis_state}}
  return total, (losses, new_model_state, out, dout)


def _frames(x: Array) -> Array:
  return x.reshape((-1,) + x.shape[2:])


def _global_norm(tree) -> Array:
  return optax.global_norm(tree) if jax.tree_util.tree_leaves(tree) else jnp.zeros(())


def train_step(cfg: StepConfig, state: State, batch: Mapping[str, Array],
               perceptual_params: Optional[Mapping[str, Any]] = None) -> Tuple[State, Dict[str, Array]]:
  """Forward, one backward of the summed losses, one Adam step per trained network."""
  optimizers = make_optimizers(cfg)
  trained = trainable_params(cfg, state['params'])
  grad_fn = jax.value_and_grad(lambda p: compute_losses(cfg, state, p, batch, perceptual_params), has_aux=True)
  (total, (losses, model_state, _, dout)), grads = grad_fn(trained)
  new_trained, opt_state = {}, {}
  for net in cfg.networks_to_train:
    updates, opt_state[net] = optimizers[net].update(grads[net], state['opt_state'][net], trained[net])
    new_trained[net] = optax.apply_updates(trained[net], updates)
  new_state = {'step': state['step'] + 1, 'params': merge_trainable(state['params'], new_trained),
               'model_state': model_state, 'opt_state': opt_state}
  metrics = {f'loss/{k}': v for k, v in losses.items()}
  metrics['loss/total'] = total
  for net in cfg.networks_to_train:
    metrics[f'grad_norm/{net}'] = _global_norm(grads[net])
    metrics[f'param_norm/{net}'] = _global_norm(new_trained[net])
    metrics[f'lr/{net}'] = jnp.asarray(cfg.lr(net), jnp.float32)
  metrics['scores/real'] = dout['real_scores'].astype(jnp.float32).mean()
  metrics['scores/fake'] = dout['fake_scores_gen'].astype(jnp.float32).mean()
  return new_state, metrics


def init_state(cfg: StepConfig, variables: Mapping[str, Any]) -> State:
  """Training state from model variables {'generator': {collection: ...}, 'discriminator': {...}}."""
  split = lambda v: ({'params': v['params']}, {k: x for k, x in v.items() if k != 'params'})
  gen_params, gen_state = split(variables['generator'])
  dis_params, dis_state = split(variables['discriminator'])
  params = {'generator': gen_params['params'], 'discriminator': dis_params['params']}
  optimizers = make_optimizers(cfg)
  trained = trainable_params(cfg, params)
  return {'step': jnp.zeros((), jnp.int32), 'params': params,
          'model_state': {'generator': gen_state, 'discriminator': dis_state},
          'opt_state': {n: optimizers[n].init(trained[n]) for n in cfg.networks_to_train}}


def model_variables(state: State) -> Dict[str, Any]:
  """Inverse of `init_state`: the model variables held by a training state."""
  return {'generator': {'params': state['params']['generator'], **state['model_state']['generator']},
          'discriminator': {'params': state['params']['discriminator'], **state['model_state']['discriminator']}}


def variable_shapes(cfg: StepConfig, batch: Mapping[str, Array]) -> Dict[str, Any]:
  """Shapes/dtypes ({'generator': {collection: ...}, 'discriminator': ...}) of the stage's variables for a
  batch of this structure (`jax.eval_shape` of the modules' init: traced, never compiled)."""
  gen, disc = make_models(cfg)
  key = jax.random.PRNGKey(0)  # only traced
  gen_shapes = jax.eval_shape(lambda: gen.init({'params': key}, batch, pred_source_data=cfg.enhancer,
                                                enhance=cfg.enhancer))
  n = batch['target_imgs'].shape[0] * batch['target_imgs'].shape[1]
  s = cfg.model.image_size
  dis_shapes = jax.eval_shape(lambda: disc.init({'params': key}, jnp.zeros((n, s, s, 3)), jnp.zeros((n, s, s, 3))))
  return {'generator': gen_shapes, 'discriminator': dis_shapes}


def init_variables(cfg: StepConfig, seed: int, shapes: Mapping[str, Any]) -> Dict[str, Any]:
  """Fresh variables (numpy, PyTorch-default distributions, from `seed`) of the `variable_shapes`."""
  return {'generator': host_init.initialize_like(shapes['generator'], seed, cfg.model.eps),
          'discriminator': host_init.initialize_like(shapes['discriminator'], seed + 1, cfg.model.eps)}


StepFn = Callable[[State, Mapping[str, Array], Optional[Mapping[str, Any]]], Tuple[State, Dict[str, Array]]]
