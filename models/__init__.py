"""Autoencoders, datasets, the training recipe, model bundles and image-quality metrics.

Data flow: a loader (:func:`load_dataset` and friends) gives an :class:`ImageDataset`;
:func:`train_autoencoder` trains an :class:`Autoencoder` with the paper's recipe;
:func:`save_bundle` writes decoder, encoder and training latents; :func:`load_bundle` gives a
:class:`Bundle` whose ``latents`` are the OT targets and whose ``decode`` turns transported
latents into images. ``models`` may import ``solver``, never ``service``.

A run's options (:class:`TrainOptions`, :class:`DataOptions`) are declared in
:mod:`models.options`, which needs only the standard library.
"""

try:
    import lazy_loader
except ModuleNotFoundError:  # the client install: only models.options (standard library) loads
    __all__: list[str] = []
else:
    # Each public name loads its module on first use (lazy_loader reads the names and their
    # modules from __init__.pyi, which also gives type checkers the types), so importing
    # models.options (the client's `aeot models train`) does not start torch.
    __getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
