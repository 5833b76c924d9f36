"""The bi-layer model (Zakharov et al., ECCV 2020) as a model family: what the shared code reaches it through.

Its parts: the six networks (`bilayer_jax.models`), the objective of both stages (`objective.py`), the
training setup (`setup.py`), standing statistics and the held-out evaluation (`evaluation.py`), the animator
(`bilayer_jax.inference.animator`: photo -> avatar -> frames; `fold` gives the per-frame graph that TFLite,
TorchScript and the original's layout are exported from) and the original's checkpoint layout
(`bilayer_jax.convert.original`).
"""

from bilayer_jax.convert import original
from bilayer_jax.families import base
from bilayer_jax.families.bilayer import evaluation
from bilayer_jax.families.bilayer import objective
from bilayer_jax.families.bilayer import setup
from bilayer_jax.inference import animator
from bilayer_jax.models.config import BASE_NETWORKS, BilayerConfig, NETWORK_NAMES

STAGES = (
    base.StageSpec('base', BASE_NETWORKS + ('discriminator',), (
        'The four base networks minimise RaGAN hinge + feature matching + VGG19/VGGFace perceptual + pixel L1 on '
        'the low-frequency image + mask BCE (+ the warping regulariser), with the original\'s gradient routes '
        '(docs/model.md#gradient-routes); the discriminator minimises its hinge loss.')),
    base.StageSpec('enhancer', ('texture_enhancer', 'discriminator'), (
        'The texture enhancer minimises RaGAN hinge + feature matching + perceptual losses on the ENHANCED image '
        '(docs/original_bugs.md#the-enhancer-stage-trains-nothing) with the base networks frozen in eval mode; '
        'the discriminator minimises its hinge loss.')),
)

TRAINING = base.Training(
    step_config=setup.step_config, dummy_batch=setup.dummy_batch, variable_shapes=objective.variable_shapes,
    init_variables=objective.init_variables, init_state=objective.init_state, train_step=objective.train_step,
    model_variables=objective.model_variables, frozen_params=setup.perceptual_params,
    merge_init=setup.merge_init_params, make_eval_fn=evaluation.make_eval_fn,
    make_stats_fn=evaluation.make_stats_fn, standing_statistics=evaluation.standing_statistics,
    image_grid=evaluation.image_grid)

FAMILY = base.ModelFamily(
    name='bilayer', description='Fast Bi-layer Neural Synthesis of One-Shot Realistic Head Avatars (ECCV 2020)',
    model_config=BilayerConfig, networks=NETWORK_NAMES, stages=STAGES, training=TRAINING,
    animator=animator.Animator, animator_from_params=animator.Animator.from_params,
    converters={'original': base.Converter(import_run=original.import_run, export_run=original.export_runs)})
