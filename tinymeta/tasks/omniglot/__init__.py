"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015): loading, preprocessing, caching and
N-way K-shot task sampling.

The package has one module per concern; imports flow one way, reading <- cache <- sampling:

* :mod:`.reading`: a source's files (the zip or folder layout of the Omniglot release), PNG
  decoding and preprocessing (ink 1.0, centred, resized to 28x28);
* :mod:`.cache`: the decoded arrays of a source kept in a keyed ``.npz`` cache file, written
  atomically, and :func:`load_source`, which reads or builds it;
* :mod:`.sampling`: the :class:`Omniglot` data set (rotations as classes, subsets and splits
  by alphabet), N-way K-shot task sampling and augmentation.
"""

from __future__ import annotations

from .cache import CACHE_FORMAT_VERSION, default_cache_dir, load_source
from .reading import IMAGE_SIZE as IMAGE_SIZE
from .reading import INK_THRESHOLD as INK_THRESHOLD
from .reading import RESAMPLE as RESAMPLE
from .reading import SOURCE_SIZE as SOURCE_SIZE
from .reading import PathLike as PathLike
from .reading import decode_png, preprocess
from .sampling import Omniglot, augment, augment_batch

# The constants and PathLike above are public names outside __all__, as they were before.
__all__ = [
    "CACHE_FORMAT_VERSION",
    "Omniglot",
    "augment",
    "augment_batch",
    "decode_png",
    "default_cache_dir",
    "load_source",
    "preprocess",
]
