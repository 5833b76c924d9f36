"""The FSTH meta-learning objective and one training iteration as the reference's train.py runs it
(docs/fsth.md#meta-learning).

One iteration: the embedder embeds the K frames of each video (one call on N·K pairs) and the embeddings
are averaged; the generator renders the target landmark image from that average; the discriminator scores
the fake (with gradients) and then the real (without). The generator loss is content (VGG19 + VGGFace L1 on
relu1_1 … relu5_1, 0.15 and 0.025) + adversarial (−mean score of the fake + 10 · feature matching over the
seven discriminator blocks, real features fixed) + embedding match (10 · mean |ê_k − w_i| over every one of
the K frame embeddings). One Adam step (lr 5e-5) updates the embedder and the generator only. Then the
discriminator takes two hinge-loss Adam steps (lr 2e-4) on the same batch, fake first, each on its own
fresh scores; the per-video rows `w_i` are discriminator parameters there (the match loss does not train
them). Every network call in train mode runs one power iteration of its spectral norms, in this order, so
the discriminator's u, v move six times per iteration.
"""

import dataclasses
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from bilayer_jax.models import vgg
from bilayer_jax.models.fsth import networks
from bilayer_jax.models.fsth.config import FSTHConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MetaStepConfig:
  """The reference's training settings (params/params.py, train.py, loss/*.py) and the trainer's stage.

  The run config's `loss` and `optim` sections (bilayer_jax.config.FSTHLossConfig, FSTHOptimConfig) say
  what each field means; `families/fsth/setup.py` builds this from them.
  """
  model: FSTHConfig = FSTHConfig()
  vgg19: vgg.VGGSpec = vgg.FSTH_VGG19
  vggface: vgg.VGGSpec = vgg.FSTH_VGGFACE
  vgg19_weight: float = 0.15
  vggface_weight: float = 0.025
  lpips_vgg16_weight: float = 0.0
  feature_matching_weight: float = 10.0
  match_weight: float = 10.0
  generator_lr: float = 5e-5  # embedder + generator
  discriminator_lr: float = 2e-4
  discriminator_updates: int = 2
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  reload_rows_through_leaky_relu: bool = True
  target_in_sources: bool = True
  # The trainer's view (bilayer_jax.families.base.Training): the stage, what it trains, rows of the
  # per-video matrix (the training split's examples, padded to a multiple of the devices).
  stage: str = 'meta'
  networks_to_train: Tuple[str, ...] = ('embedder', 'generator', 'discriminator')
  generator_train_modes: Tuple[str, ...] = ()  # no batch statistics to stand
  num_video_rows: int = 0

  @property
  def content_terms(self) -> Tuple[Tuple[vgg.VGGSpec, float], ...]:
    """(network, weight) of each content-loss term in use."""
    terms = ((self.vgg19, self.vgg19_weight), (self.vggface, self.vggface_weight),
             (vgg.FSTH_VGG16_LPIPS, self.lpips_vgg16_weight))
    return tuple((spec, weight) for spec, weight in terms if weight)


def _l1(a: Array, b: Array) -> Array:
  return jnp.mean(jnp.abs(a - b))


def content_loss(cfg: MetaStepConfig, perceptual: Mapping[str, Any], real: Array, fake: Array) -> Array:
  """0.15 Σ_l L1(VGG19_l) + 0.025 Σ_l L1(VGGFace_l), the real image's features fixed."""
  total = 0.0
  for spec, weight in cfg.content_terms:
    net = vgg.VGGFeatures(spec)
    real_feats = jax.lax.stop_gradient(net.apply(perceptual[spec.name], real))
    fake_feats = net.apply(perceptual[spec.name], fake)
    total = total + weight * sum(_l1(r, f) for r, f in zip(real_feats, fake_feats))
  return total


def adversarial_loss(cfg: MetaStepConfig, fake_scores: Array, real_features, fake_features) -> Array:
  matching = sum(_l1(jax.lax.stop_gradient(r), f) for r, f in zip(real_features, fake_features))
  return -jnp.mean(fake_scores) + cfg.feature_matching_weight * matching


def match_loss(cfg: MetaStepConfig, frame_embeddings: Array, video_rows: Array) -> Array:
  """10 · mean |ê_k − w_i| over the K frame embeddings (N, K, C) of each video (rows (N, C))."""
  return cfg.match_weight * _l1(frame_embeddings, video_rows[:, None, :])


def hinge_loss(real_scores: Array, fake_scores: Array) -> Array:
  return jnp.mean(jax.nn.relu(1.0 - real_scores)) + jnp.mean(jax.nn.relu(1.0 + fake_scores))


def _apply(module, variables, *args, **kwargs):
  """One train-mode call: (output, variables with the spectral vectors after its power iteration)."""
  out, updated = module.apply(variables, *args, train=True, mutable=['spectral'], **kwargs)
  return out, {**variables, 'spectral': updated['spectral']}


def generator_loss(cfg: MetaStepConfig, trained: Mapping[str, Any], state: Mapping[str, Any],
                   perceptual: Mapping[str, Any], batch: Mapping[str, Array]):
  """(LossG, (parts, outputs, variables after the calls)) for the embedder + generator params `trained`.

  batch: 'frames', 'landmarks' (N, K, H, W, 3) in [0, 1], 'target_frame', 'target_landmarks' (N, H, W, 3),
  'video_rows' (N, C): the videos' rows of the embedding matrix as the discriminator uses them.
  """
  m = cfg.model
  n, k = batch['frames'].shape[:2]
  embedder_vars = {**state['embedder'], 'params': trained['embedder']}
  generator_vars = {**state['generator'], 'params': trained['generator']}
  flat = lambda x: x.reshape(n * k, *x.shape[2:])
  e_vectors, embedder_vars = _apply(networks.Embedder(m), embedder_vars, flat(batch['frames']),
                                    flat(batch['landmarks']))
  e_vectors = e_vectors.reshape(n, k, -1)
  e_hat = e_vectors.mean(axis=1)
  fake, generator_vars = _apply(networks.Generator(m), generator_vars, batch['target_landmarks'], e_hat)
  disc = networks.Discriminator(m)
  (fake_scores, fake_feats), disc_vars = _apply(disc, state['discriminator'], fake, batch['target_landmarks'],
                                                batch['video_rows'])
  (_, real_feats), disc_vars = _apply(disc, jax.lax.stop_gradient(disc_vars), batch['target_frame'],
                                      batch['target_landmarks'], batch['video_rows'])
  parts = {'loss_cnt': content_loss(cfg, perceptual, batch['target_frame'], fake),
           'loss_adv': adversarial_loss(cfg, fake_scores, real_feats, fake_feats),
           'loss_match': match_loss(cfg, e_vectors, batch['video_rows'])}
  total = parts['loss_cnt'] + parts['loss_adv'] + parts['loss_match']
  outputs = {'e_hat': e_hat, 'x_hat': fake, 'r_hat': fake_scores}
  variables = {'embedder': embedder_vars, 'generator': generator_vars,
               'discriminator': jax.lax.stop_gradient(disc_vars)}
  return total, (parts, outputs, variables)


def discriminator_loss(cfg: MetaStepConfig, d_params: Mapping[str, Any], d_state: Mapping[str, Any],
                       fake: Array, batch: Mapping[str, Array]):
  """(hinge loss, discriminator variables after its two calls); d_params holds 'net' and 'video_rows'."""
  disc = networks.Discriminator(cfg.model)
  variables = {**d_state, 'params': d_params['net']}
  (fake_scores, _), variables = _apply(disc, variables, fake, batch['target_landmarks'], d_params['video_rows'])
  (real_scores, _), variables = _apply(disc, variables, batch['target_frame'], batch['target_landmarks'],
                                       d_params['video_rows'])
  return hinge_loss(real_scores, fake_scores), variables


def adam(cfg: MetaStepConfig, lr: float) -> optax.GradientTransformation:
  return optax.adam(lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps)


def _optax_update(optimizer: optax.GradientTransformation):
  """(grads, params, state) -> (params, state) of one step of `optimizer`."""
  def update(grads, params, opt_state):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return update


def init_row_moments(rows: Array) -> Dict[str, Array]:
  """Adam moments of per-video rows (N, C): each row has its own step count."""
  return {'mu': jnp.zeros_like(rows), 'nu': jnp.zeros_like(rows), 'count': jnp.zeros(rows.shape[:1], jnp.int32)}


def row_adam(cfg: MetaStepConfig, grads: Array, rows: Array, moments: Mapping[str, Array]):
  """One Adam step (lr `discriminator_lr`) of each row with its own moments and step count, as if every
  video's row had its own optimiser: the per-video matrix is updated only in the rows of the batch's videos.
  Returns (rows, moments)."""
  b1, b2 = cfg.adam_b1, cfg.adam_b2
  count = moments['count'] + 1
  mu = b1 * moments['mu'] + (1 - b1) * grads
  nu = b2 * moments['nu'] + (1 - b2) * grads * grads
  step = count.astype(rows.dtype)[:, None]
  mu_hat, nu_hat = mu / (1 - b1 ** step), nu / (1 - b2 ** step)
  rows = rows - cfg.discriminator_lr * mu_hat / (jnp.sqrt(nu_hat) + cfg.adam_eps)
  return rows, {'mu': mu, 'nu': nu, 'count': count}


def meta_discriminator_update(cfg: MetaStepConfig):
  """(grads, params, state) -> (params, state) of the discriminator's Adam step in meta-learning: params
  {'net', 'video_rows'}, state {'net': Adam state of the network, 'rows': `init_row_moments` of the rows}."""
  net_update = _optax_update(adam(cfg, cfg.discriminator_lr))

  def update(grads, params, opt_state):
    net, net_state = net_update(grads['net'], params['net'], opt_state['net'])
    rows, row_state = row_adam(cfg, grads['video_rows'], params['video_rows'], opt_state['rows'])
    return {'net': net, 'video_rows': rows}, {'net': net_state, 'rows': row_state}

  return update


def discriminator_updates(cfg: MetaStepConfig, loss_fn, update_fn, d_params, opt_state, d_variables,
                          fake: Array, batch: Mapping[str, Array], metrics: Dict[str, Any]):
  """`cfg.discriminator_updates` steps `update_fn(grads, params, opt_state)` of `loss_fn(cfg, params, state,
  fake, batch)` on the detached fake; records loss_d1, loss_d2, ... and the first step's gradients
  ('grad_d') in `metrics`. Returns (params, the other variables after the last call, optimiser state)."""
  d_state = {k: v for k, v in d_variables.items() if k != 'params'}
  fake = jax.lax.stop_gradient(fake)
  for update in range(1, cfg.discriminator_updates + 1):
    (loss_d, d_vars), grads_d = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(cfg, d_params, d_state, fake,
                                                                                      batch)
    d_state = {k: v for k, v in d_vars.items() if k != 'params'}
    d_params, opt_state = update_fn(grads_d, d_params, opt_state)
    metrics[f'loss_d{update}'] = loss_d
    if update == 1:
      metrics['grad_d'] = grads_d
  return d_params, d_state, opt_state


def meta_iteration(cfg: MetaStepConfig, variables: Mapping[str, Any], video_rows: Array,
                   opt_state: Mapping[str, Any], perceptual: Mapping[str, Any], batch: Mapping[str, Array]):
  """One meta-learning iteration from the given optimiser states.

  variables: {'embedder', 'generator', 'discriminator'} Flax variables; video_rows (N, C): the batch's rows
  as the discriminator uses them; opt_state: {'generator': Adam state of the {'embedder', 'generator'}
  params, 'discriminator': the `meta_discriminator_update` state}. Returns (variables, video rows,
  optimiser states, metrics with the losses, outputs and gradients).
  """
  batch = {**batch, 'video_rows': video_rows}
  trained = {net: variables[net]['params'] for net in ('embedder', 'generator')}
  (loss_g, (parts, outputs, after)), grads_g = jax.value_and_grad(generator_loss, argnums=1, has_aux=True)(
      cfg, trained, variables, perceptual, batch)
  trained, opt_g = _optax_update(adam(cfg, cfg.generator_lr))(grads_g, trained, opt_state['generator'])
  metrics = {'loss_g': loss_g, **parts, **outputs, 'grad_g': grads_g}
  d_params = {'net': variables['discriminator']['params'], 'video_rows': video_rows}
  d_params, d_state, opt_d = discriminator_updates(cfg, discriminator_loss, meta_discriminator_update(cfg), d_params,
                                                   opt_state['discriminator'], after['discriminator'],
                                                   outputs['x_hat'], batch, metrics)
  new_variables = {'embedder': {**after['embedder'], 'params': trained['embedder']},
                   'generator': {**after['generator'], 'params': trained['generator']},
                   'discriminator': {**d_state, 'params': d_params['net']}}
  return new_variables, d_params['video_rows'], {'generator': opt_g, 'discriminator': opt_d}, metrics


def init_opt_state(cfg: MetaStepConfig, variables: Mapping[str, Any], video_rows: Array) -> Dict[str, Any]:
  """Fresh optimiser states of `meta_iteration`."""
  trained = {net: variables[net]['params'] for net in ('embedder', 'generator')}
  return {'generator': adam(cfg, cfg.generator_lr).init(trained),
          'discriminator': {'net': adam(cfg, cfg.discriminator_lr).init(variables['discriminator']['params']),
                            'rows': init_row_moments(video_rows)}}


def meta_step(cfg: MetaStepConfig, variables: Mapping[str, Any], perceptual: Mapping[str, Any],
              batch: Mapping[str, Array]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """One iteration from fresh Adam states, as the reference's first; returns (variables and video rows
  after it, metrics and gradients). `batch['video_rows']`: the rows as the discriminator uses them."""
  rows = batch['video_rows']
  new_variables, rows, _, metrics = meta_iteration(cfg, variables, rows, init_opt_state(cfg, variables, rows),
                                                   perceptual, batch)
  return {'variables': new_variables, 'video_rows': rows}, metrics


def finetune_init(cfg: MetaStepConfig, variables: Mapping[str, Any], e_hat: Array) -> Dict[str, Any]:
  """Fine-tuning's starting point for a new person with mean embedding `e_hat` (C,): the generator's
  `psi = P e_hat` and the discriminator's `w' = w0 + e_hat` (docs/fsth.md#fine-tuning)."""
  del cfg
  generator = dict(variables['generator']['params'])
  generator['psi'] = generator['projection'] @ e_hat
  discriminator = dict(variables['discriminator']['params'])
  discriminator['w_prime'] = discriminator['w0'] + e_hat
  return {'generator': {**variables['generator'], 'params': generator},
          'discriminator': {**variables['discriminator'], 'params': discriminator}}


def finetune_generator_loss(cfg: MetaStepConfig, g_params: Mapping[str, Any], state: Mapping[str, Any],
                            perceptual: Mapping[str, Any], batch: Mapping[str, Array]):
  """Content + adversarial loss of the fine-tuned generator (no match term); batch: 'frame', 'landmarks'."""
  m = cfg.model
  fake, generator_vars = _apply(networks.Generator(m), {**state['generator'], 'params': g_params},
                                batch['landmarks'], finetuned=True)
  disc = networks.Discriminator(m)
  (fake_scores, fake_feats), disc_vars = _apply(disc, state['discriminator'], fake, batch['landmarks'],
                                                finetuned=True)
  (_, real_feats), disc_vars = _apply(disc, jax.lax.stop_gradient(disc_vars), batch['frame'], batch['landmarks'],
                                      finetuned=True)
  parts = {'loss_cnt': content_loss(cfg, perceptual, batch['frame'], fake),
           'loss_adv': adversarial_loss(cfg, fake_scores, real_feats, fake_feats)}
  variables = {'generator': generator_vars, 'discriminator': jax.lax.stop_gradient(disc_vars)}
  return parts['loss_cnt'] + parts['loss_adv'], (parts, {'x_hat': fake, 'r_hat': fake_scores}, variables)


def _finetune_discriminator_loss(cfg: MetaStepConfig, d_params, d_state, fake: Array, batch: Mapping[str, Array]):
  disc = networks.Discriminator(cfg.model)
  variables = {**d_state, 'params': d_params}
  (fake_scores, _), variables = _apply(disc, variables, fake, batch['landmarks'], finetuned=True)  # fake first
  (real_scores, _), variables = _apply(disc, variables, batch['frame'], batch['landmarks'], finetuned=True)
  return hinge_loss(real_scores, fake_scores), variables


def _adam_except(cfg: MetaStepConfig, lr: float, params: Mapping[str, Any], frozen: Tuple[str, ...]):
  """Adam on every parameter but the top-level ones named in `frozen` (left exactly as they are)."""
  labels = {name: jax.tree_util.tree_map(lambda _, n=name: 'frozen' if n in frozen else 'adam', value)
            for name, value in params.items()}
  return optax.multi_transform({'adam': adam(cfg, lr), 'frozen': optax.set_to_zero()}, labels)


def finetune_optimizers(cfg: MetaStepConfig, variables: Mapping[str, Any], train_adaptive: bool = False):
  """The fine-tuning Adams of the generator and the discriminator.

  As in the reference (its optimisers are built before `finetuning_init` replaces the parameters), psi and
  w' stay at their initial values unless `train_adaptive` (the paper trains them).
  """
  g_params, d_params = variables['generator']['params'], variables['discriminator']['params']
  return {'generator': _adam_except(cfg, cfg.generator_lr, g_params, () if train_adaptive else ('psi',)),
          'discriminator': _adam_except(cfg, cfg.discriminator_lr, d_params, () if train_adaptive else ('w_prime',))}


def init_finetune_opt_state(cfg: MetaStepConfig, variables: Mapping[str, Any], train_adaptive: bool = False):
  optimizers = finetune_optimizers(cfg, variables, train_adaptive)
  return {side: optimizers[side].init(variables[side]['params']) for side in ('generator', 'discriminator')}


def finetune_iteration(cfg: MetaStepConfig, variables: Mapping[str, Any], opt_state: Mapping[str, Any],
                       perceptual: Mapping[str, Any], batch: Mapping[str, Array], train_adaptive: bool = False):
  """One fine-tuning iteration (the reference's finetuning_training.py) from the given optimiser states
  (`init_finetune_opt_state`); returns (variables, optimiser states, metrics)."""
  optimizers = finetune_optimizers(cfg, variables, train_adaptive)
  g_params = variables['generator']['params']
  (loss_g, (parts, outputs, after)), grads_g = jax.value_and_grad(finetune_generator_loss, argnums=1,
                                                                  has_aux=True)(cfg, g_params, variables, perceptual,
                                                                                batch)
  g_params, opt_g = _optax_update(optimizers['generator'])(grads_g, g_params, opt_state['generator'])
  metrics = {'loss_g': loss_g, **parts, **outputs, 'grad_g': grads_g}
  d_params, d_state, opt_d = discriminator_updates(
      cfg, _finetune_discriminator_loss, _optax_update(optimizers['discriminator']),
      variables['discriminator']['params'], opt_state['discriminator'], after['discriminator'], outputs['x_hat'],
      batch, metrics)
  new_variables = {'generator': {**after['generator'], 'params': g_params},
                   'discriminator': {**d_state, 'params': d_params}}
  return new_variables, {'generator': opt_g, 'discriminator': opt_d}, metrics


def finetune_step(cfg: MetaStepConfig, variables: Mapping[str, Any], perceptual: Mapping[str, Any],
                  batch: Mapping[str, Array], train_adaptive: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """One fine-tuning iteration from fresh Adam states, as the reference's first; returns (variables,
  metrics)."""
  opt_state = init_finetune_opt_state(cfg, variables, train_adaptive)
  new_variables, _, metrics = finetune_iteration(cfg, variables, opt_state, perceptual, batch, train_adaptive)
  return new_variables, metrics
