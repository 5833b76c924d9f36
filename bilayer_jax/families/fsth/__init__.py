"""The few-shot talking-head model (FSTH, Zakharov et al. ICCV 2019) as a model family (docs/fsth.md).

Its parts: the three networks (`bilayer_jax.models.fsth`), one meta-learning and one fine-tuning iteration
as the reference computes them (`objective.py`, parity-tested), meta-learning on the shared trainer with a
row-sharded per-video matrix (`training.py`, `setup.py`), the held-out evaluation (`evaluation.py`) and the
feed-forward animator (`bilayer_jax.inference.fsth_animator`: photos -> embedding -> frames) and the
reference's checkpoint files (`bilayer_jax.convert.fsth_checkpoint`).
"""

from bilayer_jax.convert import fsth_checkpoint
from bilayer_jax.families import base
from bilayer_jax.families import video_table
from bilayer_jax.families.fsth import evaluation
from bilayer_jax.families.fsth import setup
from bilayer_jax.families.fsth import training
from bilayer_jax.inference import fsth_animator
from bilayer_jax.models.fsth.config import FSTHConfig

STAGES = (
    base.StageSpec('meta', training.NETWORKS, (
        'Meta-learning episodes of K frames of a video: the embedder and generator take one Adam step on '
        'content (VGG19 + VGGFace) + adversarial (hinge + feature matching) + embedding-match losses; the '
        'discriminator and the batch\'s rows of the per-video matrix take two hinge-loss steps.')),
)

TRAINING = base.Training(
    step_config=setup.step_config, dummy_batch=video_table.dummy_batch, variable_shapes=training.variable_shapes,
    init_variables=training.init_variables, init_state=training.init_state, train_step=training.train_step,
    model_variables=training.model_variables, frozen_params=setup.content_params, merge_init=setup.merge_init,
    make_eval_fn=evaluation.make_eval_fn, make_stats_fn=base.no_stats_fn,
    standing_statistics=base.keep_statistics, image_grid=evaluation.image_grid,
    row_sharded=training.ROW_SHARDED, with_video_index=True, landmark_style='fsth_sketch')

FAMILY = base.ModelFamily(
    name='fsth', description='Few-Shot Adversarial Learning of Realistic Neural Talking Head Models (ICCV 2019)',
    model_config=FSTHConfig, networks=training.NETWORKS, stages=STAGES, training=TRAINING,
    animator=fsth_animator.FSTHAnimator, animator_from_params=fsth_animator.FSTHAnimator.from_params,
    converters={'original': base.Converter(import_run=fsth_checkpoint.import_run,
                                           export_run=fsth_checkpoint.export_run)})
