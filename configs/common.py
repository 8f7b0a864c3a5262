"""Fields shared by every dataset config (training and certification).

Sentinels: -1 means "all" or "automatic" for the integer fields so that every
field keeps one type and can be overridden from the command line.
"""

import ml_collections

# The 15 noise levels of the paper's CIFAR-10 experiments (Yang et al. 2020).
CIFAR10_SIGMAS = (0.15,) + tuple(0.25 * n for n in range(1, 15))
IMAGENET_SIGMAS = (0.5, 2.0, 3.5)


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the paper's reference recipe, no dataset or model yet."""
  config = ml_collections.ConfigDict()
  config.dataset = ""
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.model = ""
  config.compute_dtype = "float32"  # "bfloat16" on GPUs and TPUs.

  # Smoothing (docs/design.md, section 1). Stored in every checkpoint.
  config.noise = "dssn"  # dssn | ssn | uniform | none
  config.sigma = 0.5
  config.q = 255
  config.offsets_seed = 0
  config.offsets_layout = "jax"  # jax | torch (the authors' template)
  config.stability = False
  config.stability_gamma = 6.0

  # Optimization: SGD, Nesterov momentum, weight decay, cosine schedule.
  config.seed = 0
  config.batch_size = 64
  config.num_epochs = 120
  config.steps_per_epoch = -1  # -1: one pass over the training split.
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 1e-4
  # Grain worker processes that decode training batches, per process. -1:
  # the dataset's default (dssn_jax/data/datasets.py: none for the small
  # datasets, one per core but one for ImageNet's JPEGs); 0: in threads.
  config.decode_workers = -1
  # Disjoint shards the training data is read in; the batches depend on it,
  # not on the process count. -1: one per process (fixed at a run's start).
  config.data_shards = -1
  config.eval_batch_size = 256
  config.eval_max_examples = -1  # -1: the whole evaluation split.
  config.keep_checkpoints = 3
  # A checkpoint every this many steps into an epoch too (0: at epoch ends
  # only), so that a job killed mid-epoch (preemption) resumes there, with
  # the input iterators' states, instead of replaying the epoch. 1,000 steps
  # is minutes of ImageNet training (20 per epoch at batch 64) and never
  # comes up in the small datasets' shorter epochs. Mid-epoch checkpoints
  # count against keep_checkpoints.
  config.checkpoint_every_steps = 1000
  # Resume under settings that change the result (config.json's history).
  config.allow_changed_config = False
  config.log_every_steps = 100

  # Denoiser training (experiments/train_denoiser.py; README "Denoised
  # smoothing"): a DnCNN under the noise above; noise, sigma, offsets, seed,
  # batch_size, num_epochs and steps_per_epoch are shared with the fields
  # above, the optimizer is Adam with a cosine schedule.
  config.denoiser = ml_collections.ConfigDict()
  config.denoiser.model = "dncnn"
  config.denoiser.depth = 17  # Salman et al.'s DnCNN: 17 convs, 64 wide.
  config.denoiser.width = 64
  config.denoiser.objective = "mse"  # mse | stability
  # stability: the frozen classifier's training workdir.
  config.denoiser.classifier_workdir = ""
  config.denoiser.learning_rate = 1e-3

  # Certification (experiments/certify.py).
  config.certify = ml_collections.ConfigDict()
  config.certify.method = "dssn"  # dssn (exact) | uniform | ssn (randomized)
  # (or dssn_early | uniform_seq | ssn_seq: answers at `radii` only, with as
  # few samples as decide them; docs/design.md, section 7)
  config.certify.split = "test"
  config.certify.start = 0
  config.certify.skip = 1
  config.certify.max_examples = -1  # -1: to the end of the split.
  # Images per certification call per host; -1: one per local device.
  config.certify.batch_size = 32
  config.certify.chunk_size = -1  # -1: sized from the batch.
  config.certify.n0 = 64
  config.certify.n = 100_000
  config.certify.alpha = 0.001
  # Sequential methods: counting draws at the first look, then doubling up
  # to n (N_max); alpha is split over the looks.
  config.certify.first_look = 100
  config.certify.seed = 0
  # Smoothing comes from the checkpoint; a config value that disagrees is an
  # error unless this is True (then the config's sigma/seed/layout are used).
  config.certify.override_smoothing = False
  config.certify.results_name = ""  # "" -> certify_{method}.tsv
  # A denoiser's training workdir: certify f(D(x~)) (denoised smoothing)
  # with --workdir the classifier's; results go into --workdir.
  config.certify.denoiser_workdir = ""
  # "" certifies in the checkpoint's compute dtype; "bfloat16" or "float32"
  # override it. The certificate holds for the classifier as computed in
  # that dtype (README, "Performance").
  config.certify.compute_dtype = ""
  # A results file records how its classifier was computed (backend, jax
  # and jaxlib versions, compute dtype, XLA flags); resuming it under other
  # values is refused unless this is True.
  config.certify.allow_other_computation = False
  # Radii (l1, in [0, 1] pixel units) of the summary and the tables.
  config.certify.radii = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a run of seconds on a CPU (tests, quick looks)."""
  config.num_epochs = 2
  config.steps_per_epoch = 3
  config.batch_size = 8
  config.decode_workers = 0  # No worker to start for a run of seconds.
  config.eval_batch_size = 16
  config.eval_max_examples = 32
  config.log_every_steps = 1
  config.certify.max_examples = 6
  config.certify.batch_size = 4
  config.certify.n0 = 8
  config.certify.n = 64
  return config
