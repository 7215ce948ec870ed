"""Autoencoders, datasets, the training recipe, model bundles and image-quality metrics.

Data flow: a loader (:func:`load_dataset` and friends) gives an :class:`ImageDataset`;
:func:`train_autoencoder` trains an :class:`Autoencoder` with the paper's recipe;
:func:`save_bundle` writes decoder, encoder and training latents; :func:`load_bundle` gives a
:class:`Bundle` whose ``latents`` are the OT targets and whose ``decode`` turns transported
latents into images. ``models`` may import ``solver``, never ``service``.
"""

from models.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder
from models.bundle import (
    BUNDLE_FORMAT,
    Bundle,
    BundleConfig,
    EpochRecord,
    TrainMetrics,
    load_bundle,
    save_bundle,
)
from models.classifier import (
    Classifier,
    ClassifierConfig,
    ClassifierTrainConfig,
    TrainedClassifier,
    classifier_accuracy,
    features_and_predictions,
    load_classifier,
    save_classifier,
    train_classifier,
)
from models.datasets import (
    DatasetConfig,
    ImageDataset,
    dataset_config_for,
    detect_source,
    find_idx_directory,
    load_array_file,
    load_dataset,
    load_digits_dataset,
    load_idx_dataset,
    load_image_folder,
    read_idx,
)
from models.evaluate import (
    METRIC_NOTE,
    QualityReport,
    RealReference,
    class_histogram,
    evaluate_images,
    feature_frechet_distance,
    frechet_distance,
    kl_divergence,
    make_reference,
    nearest_neighbour_distances,
    precision_recall,
)
from models.plan import TrainPlan, load_plan_data, train_plan
from models.runtime import cpu_threads, resolve_device
from models.train import (
    DIGITS_AUTOENCODER,
    DIGITS_RECIPE,
    TrainConfig,
    TrainResult,
    train_and_save,
    train_autoencoder,
    train_default_digits,
)

__all__ = [
    "BUNDLE_FORMAT",
    "DIGITS_AUTOENCODER",
    "DIGITS_RECIPE",
    "METRIC_NOTE",
    "Autoencoder",
    "AutoencoderConfig",
    "Bundle",
    "BundleConfig",
    "Classifier",
    "ClassifierConfig",
    "ClassifierTrainConfig",
    "DatasetConfig",
    "EpochRecord",
    "ImageDataset",
    "QualityReport",
    "RealReference",
    "TrainConfig",
    "TrainMetrics",
    "TrainPlan",
    "TrainResult",
    "TrainedClassifier",
    "build_autoencoder",
    "class_histogram",
    "dataset_config_for",
    "detect_source",
    "classifier_accuracy",
    "cpu_threads",
    "evaluate_images",
    "feature_frechet_distance",
    "features_and_predictions",
    "find_idx_directory",
    "frechet_distance",
    "kl_divergence",
    "load_array_file",
    "load_bundle",
    "load_classifier",
    "load_dataset",
    "load_digits_dataset",
    "load_idx_dataset",
    "load_image_folder",
    "load_plan_data",
    "make_reference",
    "nearest_neighbour_distances",
    "precision_recall",
    "read_idx",
    "resolve_device",
    "save_bundle",
    "save_classifier",
    "train_and_save",
    "train_autoencoder",
    "train_classifier",
    "train_default_digits",
    "train_plan",
]
