"""Data: loading datasets (`loading`), images as models read them (`images`: transforms, collator),
what a run trains on (`config`), the record of it that snapshots keep (`record`), and the offline
text of Debian's `fortunes` (`fortunes`) and of WordNet's definitions (`wordnet`)."""

from .config import DataConfig, Splits, carved_splits, cli_splits
from .fortunes import FORTUNES_TOPICS, FortunesMissingError, fortunes_tokenizer, load_fortunes_topics
from .images import (
    ImageColumns,
    ImageTransformConfig,
    build_image_transform,
    check_image_columns,
    image_collator,
    label_names,
    with_image_transform,
)
from .loading import (
    BUILTIN_DATASETS,
    FASHION_MNIST_LABELS,
    DataError,
    default_normalisation,
    lm_blocks,
    load_dataset_split,
    load_fashion_mnist,
    load_fashion_mnist_rotations,
    load_tokenizer,
    resolve_label_column,
    stratified_split,
    tokenize_text_dataset,
    with_label_noise,
)
from .record import DatasetIdentity, dataset_record
from .wordnet import WORDNET_CATEGORIES, WordnetMissingError, load_wordnet_glosses

__all__ = ["BUILTIN_DATASETS", "DataConfig", "DataError", "DatasetIdentity", "FASHION_MNIST_LABELS", "FORTUNES_TOPICS",
           "FortunesMissingError", "ImageColumns", "ImageTransformConfig", "Splits", "build_image_transform", "carved_splits",
           "check_image_columns", "cli_splits", "dataset_record", "default_normalisation", "fortunes_tokenizer",
           "image_collator", "label_names", "lm_blocks", "load_dataset_split", "load_fashion_mnist",
           "load_fashion_mnist_rotations", "load_fortunes_topics", "load_tokenizer", "resolve_label_column",
           "stratified_split", "tokenize_text_dataset", "with_image_transform", "with_label_noise", "WORDNET_CATEGORIES",
           "WordnetMissingError", "load_wordnet_glosses"]
