"""The latent-pose-descriptor model (LPD, Burkov et al. CVPR 2020) as a model family (docs/lpd.md).

Its parts: the networks (`bilayer_jax.models.lpd`), one meta-learning and one fine-tuning iteration as the
official runner computes them (`objective.py`, `losses.py`, parity-tested), meta-learning on the shared
trainer with a row-sharded projection table and the EMA of the embedder and generator (`training.py`,
`setup.py`), the held-out evaluation (`evaluation.py`), the animator (`bilayer_jax.inference.lpd_animator`:
photos -> identity vector -> frames posed by driver face crops), the official state-dict layout
(`bilayer_jax.convert.lpd_reference`) and checkpoint files (`bilayer_jax.convert.lpd_checkpoint`).
"""

from bilayer_jax.convert import lpd_checkpoint
from bilayer_jax.families import base
from bilayer_jax.families.lpd import evaluation
from bilayer_jax.families.lpd import setup
from bilayer_jax.families.lpd import training
from bilayer_jax.inference import lpd_animator
from bilayer_jax.models.lpd.config import LPDConfig

STAGES = (
    base.StageSpec('meta', training.NETWORKS, (
        'Meta-learning: K identity frames and one augmented pose frame of a video; the embedder and generator '
        'take one step on adversarial + feature matching + VGG19 + VGGFace + dice + embedding match, the '
        'discriminator and its projection table one hinge step on the same forward.')),
)

TRAINING = base.Training(
    step_config=setup.step_config, dummy_batch=setup.dummy_batch, variable_shapes=training.variable_shapes,
    init_variables=training.init_variables, init_state=training.init_state, train_step=training.train_step,
    model_variables=training.model_variables, frozen_params=setup.perceptual_params, merge_init=setup.merge_init,
    make_eval_fn=evaluation.make_eval_fn, make_stats_fn=base.no_stats_fn,
    standing_statistics=base.keep_statistics, image_grid=evaluation.image_grid,
    row_sharded=training.ROW_SHARDED, with_video_index=True, example_transform=setup.pose_augmentation)

FAMILY = base.ModelFamily(
    name='lpd', description='Neural Head Reenactment with Latent Pose Descriptors (CVPR 2020)',
    model_config=LPDConfig, networks=training.NETWORKS, stages=STAGES, training=TRAINING,
    animator=lpd_animator.LPDAnimator, animator_from_params=lpd_animator.LPDAnimator.from_params,
    converters={'original': base.Converter(import_run=lpd_checkpoint.import_run,
                                           export_run=lpd_checkpoint.export_run)})
