r"""ImageNet-style training decode throughput per CPU core: Grain + PIL
(dssn_jax's pipeline) against tf.data (the pipeline it replaced), on the
same mock JPEGs of ImageNet size.

Both make random-resized crops (area 8-100%, aspect 3/4-4/3) resized to
224x224 and flipped, from JPEGs of 500x375 pixels (about ImageNet's mean
size, quality 90) held in memory, on one core: Grain reads with no worker
process and one thread, tf.data runs with one thread per op pool and no
parallel map. TensorFlow's path decodes only the crop window
(``decode_and_crop_jpeg``); PIL decodes the whole JPEG. Prints images/s of
each (median of --rounds).

  python -m benchmarks.decode_throughput --images=256 --rounds=3
"""

from __future__ import annotations

import io
import statistics
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

_IMAGES = flags.DEFINE_integer("images", 256, "JPEGs per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per pipeline.")
SIZE = (224, 224)


def mock_jpegs(n: int, seed: int = 0) -> list[bytes]:
  """n JPEGs of 500x375 smooth random pictures (JPEG sizes like photos')."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    small = rng.integers(0, 256, (24, 32, 3), np.uint8)
    image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def grain_rate(jpegs: list[bytes]) -> float:
  """Images/s of Grain + PIL on one core (one thread, no workers)."""
  import grain  # pylint: disable=g-import-not-at-top

  from dssn_jax.data import transforms  # pylint: disable=g-import-not-at-top

  ds = (
      grain.MapDataset.source(jpegs)
      .random_map(
          lambda jpeg, rng: transforms.random_resized_crop(jpeg, rng, SIZE),
          seed=0,
      )
      .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))
  )
  start = time.perf_counter()
  count = sum(1 for _ in ds)
  return count / (time.perf_counter() - start)


def tf_data_rate(jpegs: list[bytes]) -> float:
  """Images/s of the replaced tf.data pipeline on one core."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)

  def crop(encoded, seed):
    box_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2)
    )
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(encoded),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=box_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], box[0], box[1]])
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize(image, SIZE, method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)

  ds = tf.data.Dataset.from_tensor_slices(jpegs).enumerate()
  ds = ds.map(lambda i, x: crop(x, tf.stack([tf.constant(0, tf.int64), i])))
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.autotune.enabled = False
  ds = ds.with_options(options).prefetch(8)
  start = time.perf_counter()
  count = sum(1 for _ in ds.as_numpy_iterator())
  return count / (time.perf_counter() - start)


def main(argv):
  del argv
  jpegs = mock_jpegs(_IMAGES.value)
  mean_bytes = np.mean([len(j) for j in jpegs])
  print(f"{len(jpegs)} JPEGs 500x375, mean {mean_bytes:.0f} bytes")
  for name, rate in (("grain+PIL", grain_rate), ("tf.data", tf_data_rate)):
    rate(jpegs[:16])  # Warm-up: imports, tracing.
    rates = [rate(jpegs) for _ in range(_ROUNDS.value)]
    print(f"{name}: {statistics.median(rates):.0f} images/s on one core")


if __name__ == "__main__":
  app.run(main)
