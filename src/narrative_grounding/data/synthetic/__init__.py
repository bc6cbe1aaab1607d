"""A synthetic PNG dataset in the official layout: textured stuff, shape instances, narrative captions.

``generate_synthetic_dataset(output_dir, num_train=..., num_validation=..., image_size=128, level="hard")``
writes it, ``ensure_synthetic_data(level, num_train=..., ...)`` generates it once into a cache folder and
returns that folder; :data:`VOCABULARY` lists every word its captions can contain.
"""

from .cache import default_cache_root, ensure_synthetic_data, synthetic_data_dir
from .generator import SYNTHETIC_MARKER, VALIDATION_ID_OFFSET, SyntheticStats, generate_synthetic_dataset
from .levels import EXPRESSION_KINDS, LEVELS, SyntheticLevel, get_level
from .vocabulary import STUFF_CATEGORIES, THING_CATEGORIES, THING_COLORS, VOCABULARY, categories, vocabulary

__all__ = [
    "EXPRESSION_KINDS",
    "LEVELS",
    "STUFF_CATEGORIES",
    "SYNTHETIC_MARKER",
    "THING_CATEGORIES",
    "THING_COLORS",
    "VALIDATION_ID_OFFSET",
    "VOCABULARY",
    "SyntheticLevel",
    "SyntheticStats",
    "categories",
    "default_cache_root",
    "ensure_synthetic_data",
    "generate_synthetic_dataset",
    "get_level",
    "synthetic_data_dir",
    "vocabulary",
]
