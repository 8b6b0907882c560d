"""Datasets for model inversion: loading, identity splits and batching.

  splits = load_splits(DataConfig(dataset="mnist"))
  for batch in train_batches(splits.private_train, 64, seed=0): ...

Raw files come from the command line's --data-dir D (D/<dataset>), else
DataConfig.data_dir, else $JAXMI_DATA_DIR/<dataset>, else ~/jaxmi_data/<dataset>
(downloaded there when missing and allowed); they are prepared once into TFDS
files under --cache-dir, else DataConfig.cache_dir, else $JAXMI_CACHE_DIR, else
~/.cache/jaxmi, with identities.csv (label, name, images per split) beside them.
The standard protocol's CelebA (official split files), FFHQ and FaceScrub: see
jaxmi.data.protocol for where their files go.
"""

from jaxmi.data.pipeline import eval_batches
from jaxmi.data.pipeline import steps_per_epoch
from jaxmi.data.pipeline import train_batches
from jaxmi.data.sources import DATASETS
from jaxmi.data.sources import load_raw
from jaxmi.data.sources import prepare
from jaxmi.data.sources import RawDataset
from jaxmi.data.splits import ArraySplit
from jaxmi.data.splits import DataConfig
from jaxmi.data.splits import load_splits
from jaxmi.data.splits import Splits

__all__ = [
  "ArraySplit",
  "DATASETS",
  "DataConfig",
  "RawDataset",
  "Splits",
  "eval_batches",
  "load_raw",
  "load_splits",
  "prepare",
  "steps_per_epoch",
  "train_batches",
]
