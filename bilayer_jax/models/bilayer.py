"""The bi-layer system: the generator-side networks composed as in the original (docs/model.md#composition), and the
discriminator's two passes.

`BilayerGenerator` holds identity_embedder, texture_generator, keypoints_embedder, inference_generator
and (optionally) texture_enhancer as submodules, so its variables are one tree with a subtree per
network (`variables['params']['texture_generator']`, ...), each laid out like the original's state_dict.

Image-like tensors are NHWC with leading (B, frames) axes: `source_*` (B, n, ...), `target_*` (B, T, ...);
any n >= 1 and T >= 1 work. Output names are the original's data-dict keys.

Train/eval mode is per network (`train`: the names of networks in train mode). As in the original, a
network that is not in train mode runs with frozen statistics and passes no gradient (the original runs
it under `no_grad`).
"""

from typing import Any, Collection, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.models import warp
from bilayer_jax.models.config import BilayerConfig
from bilayer_jax.models.discriminator import Discriminator
from bilayer_jax.models.generators import InferenceGenerator, TextureGenerator
from bilayer_jax.models.identity_embedder import IdentityEmbedder
from bilayer_jax.models.keypoints_embedder import KeypointsEmbedder
from bilayer_jax.models.texture_enhancer import TextureEnhancer

Array = jax.Array
GENERATOR_NETWORKS = ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator',
                      'texture_enhancer')


def apply_mask(x: Array, mask: Array) -> Array:
  """Composite onto a -1 (black in [-1, 1]) background: x * m + (-1) * (1 - m)."""
  return x * mask + (-1) * (1 - mask)


def _frames(x: Array) -> Array:
  """(B, F, ...) -> (B*F, ...)."""
  return x.reshape((-1,) + x.shape[2:])


def _unframes(x: Array, b: int) -> Array:
  """(B*F, ...) -> (B, F, ...)."""
  return x.reshape((b, -1) + x.shape[1:])


class _Trained:
  """Which networks are in train mode; outputs of the others pass no gradient (stop_gradient)."""

  def __init__(self, names: Collection[str]):
    self.names = frozenset(names)

  def __call__(self, name: str) -> bool:
    return name in self.names

  def frozen(self, name: str, tree: Any) -> Any:
    return tree if name in self.names else jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


class BilayerGenerator(nn.Module):
  """Generator side of the bi-layer model (everything but the discriminator)."""
  cfg: BilayerConfig
  with_enhancer: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.cfg.validate(with_enhancer=self.with_enhancer)
    self.identity_embedder = IdentityEmbedder(cfg, self.dtype)
    self.texture_generator = TextureGenerator(cfg, self.dtype)
    self.keypoints_embedder = KeypointsEmbedder(cfg, self.dtype)
    self.inference_generator = InferenceGenerator(cfg, self.dtype)
    if self.with_enhancer:
      self.texture_enhancer = TextureEnhancer(cfg, self.dtype)

  def _heads(self, pose_embeds: Array, adaptive, train: bool) -> Dict[str, Array]:
    """Runs the per-frame trunk on (B, F, ...) pose embeddings; returns (B, F, ...) raw head outputs."""
    b = pose_embeds.shape[0]
    outs = self.inference_generator.generate(_frames(pose_embeds), adaptive, train)
    result = {'delta_uvs': _unframes(outs[0], b), 'lf_rgbs': _unframes(outs[1], b)}
    if self.cfg.inf_pred_segmentation:
      result['segs_logits'] = _unframes(outs[2], b)
    grid = jnp.asarray(warp.identity_grid(self.cfg.image_size), result['delta_uvs'].dtype)
    result['uvs'] = grid[None] + result['delta_uvs']
    return result

  def __call__(self, batch: Dict[str, Array], *, train: Collection[str] = (), inf_apply_masks: bool = True,
               enh_apply_masks: bool = True, pred_source_data: bool = False,
               enhance: bool = False) -> Dict[str, Any]:
    """The original's generator-side forward (networks_train order, docs/model.md#composition).

    Args:
      batch: `source_imgs`, `source_segs`, `source_stickmen`, `source_poses`, `target_poses`, and, for
        masking and the discriminator, `target_imgs`, `target_stickmen` (NHWC, (B, frames, ...)).
      train: names of the networks in train mode (batch statistics, spectral-norm power iteration when
        the `spectral` collection is mutable, gradients); the others run frozen and pass no gradient.
      inf_apply_masks: composite targets/predictions with the detached predicted mask (training: True).
      enh_apply_masks: the same for the enhancer's outputs.
      pred_source_data: also run the inference generator on the source pose (needed by the enhancer).
      enhance: run the texture enhancer (requires `pred_source_data`).

    Returns:
      A dict with the original's data-dict keys (NHWC), plus the projector outputs `adaptive/prj_tex`,
      `adaptive/prj_inf` and the enhancer's per-step tensors `enh_steps`.
    """
    trained = _Trained(train)
    b, t = batch['target_poses'].shape[:2]
    out = self._avatar(batch, trained)
    self._pose_embeddings(batch, trained, pred_source_data, out)
    inf_train = trained('inference_generator')
    inf_adaptive = trained.frozen('inference_generator', self.inference_generator.project(
        out['source_idt_embeds'], train=inf_train))
    out['adaptive/prj_inf'] = inf_adaptive
    tgt = trained.frozen('inference_generator', self._heads(out['target_pose_embeds'], inf_adaptive, inf_train))
    if pred_source_data:
      src = trained.frozen('inference_generator', self._heads(out['source_pose_embeds'], inf_adaptive, inf_train))
      out['pred_source_uvs'] = src['uvs']
      out['pred_source_delta_lf_rgbs'] = src['lf_rgbs']
      if self.cfg.inf_pred_segmentation:
        out['pred_source_segs'] = jax.nn.sigmoid(src['segs_logits'])
    self._compose_targets(batch, out, tgt, b, t, inf_apply_masks)
    if enhance:
      out.update(self._enhance(batch, out, train=trained('texture_enhancer'), apply_masks=enh_apply_masks))
      out = {k: trained.frozen('texture_enhancer', v) if k.startswith('pred_enh') or k == 'enh_steps' else v
             for k, v in out.items()}
    return out

  def _avatar(self, batch: Dict[str, Array], trained: '_Trained') -> Dict[str, Any]:
    """Per-avatar part: identity embedding and texture (the inference projector follows in __call__)."""
    embeds = self.identity_embedder(batch['source_imgs'], batch['source_segs'], batch['source_stickmen'],
                                    train=trained('identity_embedder'))
    embeds = trained.frozen('identity_embedder', embeds)
    texture, tex_adaptive = trained.frozen('texture_generator',
                                           self.texture_generator(embeds, train=trained('texture_generator')))
    return {'source_idt_embeds': embeds, 'pred_tex_hf_rgbs': texture[:, None], 'adaptive/prj_tex': tex_adaptive}

  def _pose_embeddings(self, batch: Dict[str, Array], trained: '_Trained', pred_source_data: bool,
                       out: Dict[str, Any]) -> None:
    """Target pose embeddings, then the source's (one power iteration each in train mode)."""
    kp_train = trained('keypoints_embedder')
    out['target_pose_embeds'] = trained.frozen('keypoints_embedder',
                                               self.keypoints_embedder(batch['target_poses'], train=kp_train))
    if self.cfg.pse_emb_source_pose or pred_source_data:
      out['source_pose_embeds'] = trained.frozen('keypoints_embedder',
                                                 self.keypoints_embedder(batch['source_poses'], train=kp_train))

  def _compose_targets(self, batch: Dict[str, Array], out: Dict[str, Any], tgt: Dict[str, Array], b: int,
                       t: int, inf_apply_masks: bool) -> None:
    """Target images = LF + warped texture, masked with the detached predicted segmentation if asked."""
    texture = out['pred_tex_hf_rgbs'][:, 0]
    hf = _unframes(warp.grid_sample(jnp.repeat(texture, t, axis=0), _frames(tgt['uvs'])), b)
    lf = tgt['lf_rgbs']
    imgs, imgs_lf_detached = lf + hf, jax.lax.stop_gradient(lf) + hf
    target_imgs = batch.get('target_imgs')
    if self.cfg.inf_pred_segmentation:
      out['pred_target_segs_logits'] = tgt['segs_logits']
      out['pred_target_segs'] = jax.nn.sigmoid(tgt['segs_logits'])
      if inf_apply_masks:
        mask = jax.lax.stop_gradient(out['pred_target_segs'])
        imgs, lf, imgs_lf_detached = (apply_mask(x, mask) for x in (imgs, lf, imgs_lf_detached))
        if target_imgs is not None:
          target_imgs = apply_mask(target_imgs, mask)
    out.update(pred_target_imgs=imgs, pred_target_imgs_lf_detached=imgs_lf_detached,
               pred_target_delta_lf_rgbs=lf, pred_target_delta_hf_rgbs=hf, pred_target_uvs=tgt['uvs'],
               pred_target_delta_uvs=tgt['delta_uvs'])
    if target_imgs is not None:
      out['target_imgs'] = target_imgs

  def _enhance(self, batch: Dict[str, Array], out: Dict[str, Any], train: bool,
               apply_masks: bool) -> Dict[str, Any]:
    """The texture enhancer stage on top of the base outputs (the original's texture_enhancer wrapper)."""
    cfg = self.cfg
    if not self.with_enhancer:
      raise ValueError('enhance=True needs a BilayerGenerator built with with_enhancer=True')
    if 'pred_source_uvs' not in out:
      raise ValueError('the texture enhancer needs pred_source_data=True (source-pose predictions)')
    detach = jax.lax.stop_gradient if cfg.enh_detach_inputs else (lambda x: x)
    texture = detach(out['pred_tex_hf_rgbs'][:, 0])
    source_segs = out.get('pred_source_segs')
    if source_segs is not None:
      source_segs = detach(source_segs)
    enh_texture, steps = self.texture_enhancer(
        texture, batch['source_imgs'], detach(out['pred_source_delta_lf_rgbs']),
        detach(out['pred_source_uvs']), source_segs, train=train)
    b, t = out['pred_target_uvs'].shape[:2]
    target_uvs, target_lf = detach(out['pred_target_uvs']), detach(out['pred_target_delta_lf_rgbs'])
    enh_rep = jnp.repeat(enh_texture, t, axis=0)
    enh_hf = _unframes(warp.grid_sample(enh_rep, _frames(target_uvs)), b)
    enh_imgs = target_lf + enh_hf
    enh_lf_detached = jax.lax.stop_gradient(target_lf) + enh_hf
    result = {'pred_enh_tex_hf_rgbs': _unframes(enh_rep, b), 'pred_enh_target_delta_hf_rgbs': enh_hf,
              'enh_steps': steps}
    if cfg.inf_pred_segmentation and apply_masks:
      segs = detach(out['pred_target_segs'])
      mask = jax.lax.stop_gradient(segs)
      result['pred_target_imgs'] = apply_mask(out['pred_target_imgs'], segs)
      if 'target_imgs' in out:
        result['target_imgs'] = apply_mask(out['target_imgs'], mask)
      enh_imgs, enh_lf_detached = apply_mask(enh_imgs, mask), apply_mask(enh_lf_detached, mask)
    result.update(pred_enh_target_imgs=enh_imgs, pred_enh_target_imgs_lf_detached=enh_lf_detached)
    return result

  # --- Inference entry points: once per avatar, then once per frame ---------------------------------
  def init_avatar(self, source_imgs: Array, source_segs: Array, source_stickmen: Array,
                  source_poses: Optional[Array] = None, enhance: bool = False) -> Dict[str, Any]:
    """Per-avatar initialisation (eval mode): texture and the per-frame network's adaptive parameters.

    With `enhance`, `source_poses` is required and the texture is refined by the texture enhancer on the
    source frames (as infer.py does). Returns {'texture': (B, S, S, 3), 'adaptive': projector outputs}.
    """
    embeds = self.identity_embedder(source_imgs, source_segs, source_stickmen)
    texture, _ = self.texture_generator(embeds)
    adaptive = self.inference_generator.project(embeds)
    if enhance:
      if source_poses is None:
        raise ValueError('init_avatar(enhance=True) needs source_poses')
      src = self._heads(self.keypoints_embedder(source_poses), adaptive, False)
      segs = jax.nn.sigmoid(src['segs_logits']) if self.cfg.inf_pred_segmentation else None
      texture, _ = self.texture_enhancer(texture, source_imgs, src['lf_rgbs'], src['uvs'], segs)
    return {'texture': texture, 'adaptive': adaptive}

  def render(self, avatar: Dict[str, Any], target_poses: Array) -> Dict[str, Array]:
    """Per-frame rendering (eval mode): (B, T, 136) poses -> (B, T, S, S, C) image, mask, lf, hf, uv."""
    b, t = target_poses.shape[:2]
    tgt = self._heads(self.keypoints_embedder(target_poses), avatar['adaptive'], False)
    hf = _unframes(warp.grid_sample(jnp.repeat(avatar['texture'], t, axis=0), _frames(tgt['uvs'])), b)
    result = {'imgs': tgt['lf_rgbs'] + hf, 'lf_rgbs': tgt['lf_rgbs'], 'hf_rgbs': hf, 'uvs': tgt['uvs']}
    if self.cfg.inf_pred_segmentation:
      result['segs'] = jax.nn.sigmoid(tgt['segs_logits'])
    return result


def discriminator_passes(disc: Discriminator, variables: Dict[str, Any], real_imgs: Array, fake_imgs: Array,
                         stickmen: Array, train: bool = True) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """The discriminator's two passes of a training step (docs/model.md#losses).

  Pass 1 scores [real; stop_gradient(fake)] (the discriminator's loss differentiates it w.r.t. the
  discriminator's parameters); pass 2 scores [real; fake] with the parameters held constant (the
  generator's adversarial and feature-matching losses). Spectral-norm u/v and BN statistics are
  threaded pass 1 -> pass 2, as the two successive calls of the original do. Real and fake are split
  by B*T rows (the original splits by B and crashes for T > 1).

  Args:
    disc: the Discriminator module.
    variables: its variables ({'params', 'batch_stats', 'spectral'}).
    real_imgs, fake_imgs, stickmen: (B, T, H, W, 3) NHWC.
    train: train mode (batch statistics, power iteration).

  Returns:
    (outputs, new_state): outputs with `real_scores`, `fake_scores_dis`, `fake_scores_gen` ((B*T, s, s, 1))
    and `real_feats_gen`, `fake_feats_gen` (lists of 6 maps); new_state the non-param collections.
  """
  real, fake, st = _frames(real_imgs), _frames(fake_imgs), _frames(stickmen)
  rows = real.shape[0]
  mutable = ['batch_stats', 'spectral'] if train else False
  state = {k: v for k, v in variables.items() if k != 'params'}

  def run(params, imgs, state):
    result = disc.apply({'params': params, **state}, imgs, jnp.concatenate([st, st]), train=train,
                        mutable=mutable)
    if train:
      (scores, feats), new_state = result
      return scores, feats, {**state, **new_state}
    scores, feats = result
    return scores, feats, state

  scores1, _, state = run(variables['params'], jnp.concatenate([real, jax.lax.stop_gradient(fake)]), state)
  params2 = jax.tree_util.tree_map(jax.lax.stop_gradient, variables['params'])
  scores2, feats2, state = run(params2, jnp.concatenate([real, fake]), state)
  outputs = {'real_scores': scores1[:rows], 'fake_scores_dis': scores1[rows:],
             'fake_scores_gen': scores2[rows:], 'real_feats_gen': [f[:rows] for f in feats2],
             'fake_feats_gen': [f[rows:] for f in feats2]}
  return outputs, state
