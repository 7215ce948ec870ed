"""HTTP request and response schemas (pydantic v2), in families per endpoint.

Requests forbid unknown fields and reject NaN/inf, so a typo or a bad number answers 422 with
a message instead of being ignored. JSON bodies are strict: ``"5"`` is not a number, ``0`` and
``"yes"`` are not booleans. Query strings carry only text, so each GET route reads its request
through a lax twin (``SampleQuery``, ...) that parses ``n=5`` and ``extended=true``. Limits that
depend on settings (``max_n``, ...) are checked in :mod:`service.operations`, and the app writes
them into the OpenAPI schema as ``maximum`` (:func:`service.openapi.set_limits`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AliasPath,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)

from models.options import (
    MAX_CLASS_NAME,
    MAX_CLASSES,
    DataOptions,
    Option,
    TrainOptions,
    options_of,
)
from service.names import NAME_PATTERN


def _not_bool(value: Any) -> Any:
    """Refuse JSON ``true``/``false`` where a number is expected (pydantic would read 1/0)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _integral(value: Any) -> Any:
    """JSON Schema's integer: ``154.0`` is the integer 154; ``154.5`` stays an error."""
    value = _not_bool(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
FiniteFloat = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
Seed = Annotated[
    Int, Field(ge=0, le=2**31 - 1, description="seed: same seed, same answer", examples=[1])
]
ModelName = Annotated[
    str | None,
    Field(
        pattern=NAME_PATTERN,
        description="model name (default model if omitted)",
        examples=["digits"],
    ),
]
Version = Annotated[
    Int | None,
    Field(
        ge=1,
        le=2**31 - 1,
        description="published potential version to answer from (default: the one served "
        "now); a version the model never published answers 404",
        examples=[3],
    ),
]
Label = Annotated[
    Int | None,
    Field(
        ge=0,
        le=2**31 - 1,
        description="class-conditional: only the cells whose training codes have this label "
        "(models whose bundle has labels; see /models classes)",
        examples=[7],
    ),
]
# Index of the first sample of a /sample answer at most: paged clients ask for points
# offset .. offset + n - 1 of the seed's stream; fast-forwarding the Sobol stream this far takes
# about half a second at d = 32 on one core, so a request cannot buy unbounded work with it.
MAX_OFFSET = 2**24
# Images per encode/decode request at most whatever the settings say (max_images applies too).
_HARD_IMAGES = 100_000
# Latent coordinates beyond this are nonsense for any trained autoencoder (codes are O(1-100)).
LATENT_BOUND = 1e6
LatentValue = Annotated[FiniteFloat, Field(ge=-LATENT_BOUND, le=LATENT_BOUND)]
PixelValue = Annotated[FiniteFloat, Field(ge=0.0, le=1.0)]
# Lists stop at their first bad element: a body of a million wrong values answers with one
# problem, not a million error objects (a 5 MB body of them took 1.2 GB and 5 s).
_FIRST_ERROR = Field(fail_fast=True)
PixelRow = Annotated[list[PixelValue], _FIRST_ERROR]
PixelChannel = Annotated[list[PixelRow], _FIRST_ERROR]
PixelImage = Annotated[list[PixelChannel], _FIRST_ERROR]
LatentRow = Annotated[list[LatentValue], _FIRST_ERROR]
Point = Annotated[list[FiniteFloat], _FIRST_ERROR]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# The GET twins: query values are text, so they are parsed (``n=5``, ``extended=true``).
_QUERY = ConfigDict(strict=False)


class SampleRequest(_Request):
    """Draw ``n`` latents from the OT map (and decode them for ``format=png``)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"n": 16, "seed": 1, "format": "png"}]}
    )

    model: ModelName = None
    n: Int = Field(
        default=64,
        ge=1,
        description="number of samples (at most max_n; max_images for format=png)",
        examples=[16],
    )
    seed: Seed = 0
    offset: Int = Field(
        default=0,
        ge=0,
        le=MAX_OFFSET,
        description="index of the first sample in the seed's stream: pages (offset 0, n), "
        "(offset n, n), ... concatenate to the samples of one request for their total",
        examples=[4096],
    )
    extended: bool = Field(
        default=True, description="extended map T~ (new codes between training codes) or pure T"
    )
    format: Literal["json", "npy", "png"] = Field(
        default="json",
        description="json: latents in the body; npy: a float32 (n, d) .npy file; png: the "
        "decoded samples as one grid image",
    )
    version: Version = None
    label: Label = None


class SampleQuery(SampleRequest):
    """:class:`SampleRequest` read from query parameters."""

    model_config = _QUERY


class SampleResponse(BaseModel):
    """Sampled latents (``format=json``)."""

    model: str
    version: int = Field(description="potential version that produced the samples")
    seed: int
    offset: int = Field(default=0, description="index of the first sample in the seed's stream")
    extended: bool
    label: int | None = Field(default=None, description="the class sampled, if one was asked")
    latents: list[list[float]] = Field(description="shape (n, d)")


class InterpolateRequest(_Request):
    """A segment in the source cube mapped by the OT map, between points or training codes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"start_index": 0, "end_index": 42, "steps": 12, "images": True},
                {"start": [-0.4, -0.4], "end": [0.4, 0.4], "steps": 16},
                {"label": 3, "seed": 5, "steps": 12, "format": "png"},
            ]
        },
    )

    model: ModelName = None
    start: Point | None = Field(
        default=None,
        description="source point in the source cube, length d (with end)",
        examples=[[-0.4, -0.4]],
    )
    end: Point | None = Field(
        default=None,
        description="source point in the source cube, length d (with start)",
        examples=[[0.4, 0.4]],
    )
    start_index: Int | None = Field(
        default=None,
        ge=0,
        description="training code index: the segment starts at its cell's mass centre",
        examples=[0],
    )
    end_index: Int | None = Field(
        default=None, ge=0, description="training code index (with start_index)", examples=[42]
    )
    steps: Int = Field(default=16, ge=2, description="frames, evenly spaced (at most max_steps)")
    format: Literal["json", "png"] = Field(
        default="json",
        description="json: frames, cells and crossings; png: the decoded strip, a red bar "
        "between frames where the segment crosses a singular facet",
    )
    images: bool = Field(
        default=False, description="JSON only: include the decoded strip (with crossing marks)"
    )
    version: Version = None
    label: Label = None
    seed: Seed = Field(
        default=0, description="with label: chooses the two cells of that class to join"
    )

    @model_validator(mode="after")
    def _one_kind_of_endpoint(self) -> InterpolateRequest:
        points = self.start is not None or self.end is not None
        indices = self.start_index is not None or self.end_index is not None
        if self.label is not None:
            if points or indices:
                raise ValueError("label picks the endpoints: give no start/end or indices")
            return self
        if points == indices:
            raise ValueError(
                "give either start and end (points), start_index and end_index, or label"
            )
        if points and (self.start is None or self.end is None):
            raise ValueError("give both start and end")
        if indices and (self.start_index is None or self.end_index is None):
            raise ValueError("give both start_index and end_index")
        return self


class InterpolateQuery(InterpolateRequest):
    """:class:`InterpolateRequest` read from query parameters."""

    model_config = _QUERY


# The unit of a pair's score in each frame (angles in radians; the others are what they say).
SCORE_UNITS: dict[str, str] = {
    "raw": "rad",
    "standard": "rad",
    "valley": "rad x valley ratio",
    "diffusion": "diffusion distance",
}
Frame = Literal["standard", "raw", "valley", "diffusion"]
_FRAME_DESC = (
    "how pairs are scored: standard (dihedral angle of centred, cube-scaled latents), raw "
    "latents, valley (standard angle times the pair's valley ratio), or diffusion (distance "
    "in the latents' diffusion coordinates, the default of the data-driven rules)"
)
_UNIT_DESC = "unit of the scores, by frame: " + ", ".join(
    f"{unit} ({frame})" for frame, unit in SCORE_UNITS.items()
)


class CrossingOut(BaseModel):
    """Where the segment crosses a singular facet: the map jumps there."""

    t: float = Field(description="segment parameter in [0, 1] where the facet is crossed")
    from_cell: int
    to_cell: int
    angle: float = Field(description="score of the facet in the map's frame (see unit)")
    gap: int = Field(
        description="the crossing lies between frames gap and gap + 1 (the red bar in the strip)"
    )


class InterpolateResponse(BaseModel):
    """The frames of an interpolation and its singular crossings."""

    model: str
    version: int
    t: list[float]
    z: list[list[float]] = Field(description="source points, shape (steps, d)")
    latents: list[list[float]] = Field(description="mapped latents, shape (steps, d)")
    cells: list[int]
    crossings: list[CrossingOut]
    frame: Frame = Field(description=_FRAME_DESC)
    unit: str = Field(description=_UNIT_DESC)
    strip_png: str | None = Field(default=None, description="base64 PNG of the decoded frames")


class SingularitiesRequest(_Request):
    """Summary of the singular set (``format=png``: a picture of it)."""

    model: ModelName = None
    limit: Int = Field(
        default=100,
        ge=0,
        description="singular pairs listed at most (capped by the server)",
        examples=[10],
    )
    format: Literal["json", "png"] = Field(
        default="json",
        description="json: the summary; png: in 2D the power diagram with singular facets in "
        "red, in higher d the angle histogram with the threshold and the most singular pairs "
        "as decoded image pairs",
    )
    images: bool = Field(
        default=False,
        description="JSON only: each listed pair carries its two decoded training codes as a "
        "base64 PNG (at most max_images / 2 pairs)",
    )
    version: Version = None


class SingularitiesQuery(SingularitiesRequest):
    """:class:`SingularitiesRequest` read from query parameters."""

    model_config = _QUERY


class SingularPairOut(BaseModel):
    """Two adjacent cells whose facet is singular."""

    i: int
    j: int
    angle: float = Field(description="score in the map's frame (see unit)")
    pair_png: str | None = Field(
        default=None, description="base64 PNG: cell i's code and cell j's code, decoded"
    )


class SingularitiesResponse(BaseModel):
    """Threshold, rule, counts and the most singular pairs."""

    model: str
    version: int
    threshold: float | None = Field(
        description="score threshold used, in the map's frame (see unit; null: too few pairs "
        "or no cluster boundary, none singular)"
    )
    rule: Literal["fixed", "quantile", "gap", "clusters"] = Field(
        description="how the threshold was chosen (clusters: as many pairs as join two "
        "spectral clusters of the latents)"
    )
    frame: Frame = Field(description=_FRAME_DESC)
    unit: str = Field(description=_UNIT_DESC)
    clusters: int = Field(
        description="spectral clusters of the latents: the slow modes of a random walk on "
        "their neighbour graph (diffusion frame or cluster rule), else 0"
    )
    gap_ratio: float | None = Field(
        description="ratio of the angles either side of the largest gap (gap rule and the "
        "default choice), else null"
    )
    reason: str = Field(
        description="how the rule was chosen, e.g. why the default used the cluster share"
    )
    n_pairs: int = Field(description="adjacent cell pairs observed")
    n_singular: int
    singular_fraction: float
    angle_quantiles: dict[str, float] = Field(
        description="quantiles of the adjacent pairs' scores (see unit)"
    )
    pairs: list[SingularPairOut] = Field(description="singular pairs, largest score first")
    truncated: bool


_PIXELS_DESC = (
    "images as nested arrays of shape (n, C, H, W) with the model's C, H, W (see /models "
    "image_shape), values in [0, 1]"
)
_PNG_DESC = (
    "images as base64 PNG files, each exactly the model's H x W pixels (grayscale for C = 1, "
    "RGB for C = 3)"
)


class ImagesRequest(_Request):
    """Images to encode (or reconstruct): nested arrays or base64 PNGs, exactly one of them."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"images": [[[[0.0] * 8] * 8]], "format": "json"}]},
    )

    model: ModelName = None
    version: Version = None
    images: Annotated[list[PixelImage], _FIRST_ERROR] | None = Field(
        default=None, max_length=_HARD_IMAGES, description=_PIXELS_DESC
    )
    png: Annotated[list[str], _FIRST_ERROR] | None = Field(
        default=None, max_length=_HARD_IMAGES, description=_PNG_DESC
    )

    @model_validator(mode="after")
    def _one_kind_of_images(self) -> ImagesRequest:
        if (self.images is None) == (self.png is None):
            raise ValueError("give either images (nested arrays) or png (base64 PNG files)")
        if len(self.images if self.images is not None else self.png or []) == 0:
            raise ValueError("give at least one image")
        return self


class EncodeRequest(ImagesRequest):
    """Encode images to latent codes with the model's encoder."""

    format: Literal["json", "npy"] = Field(
        default="json", description="json: latents in the body; npy: a float32 (n, d) .npy file"
    )


class ReconstructRequest(ImagesRequest):
    """Encode and decode images: what the autoencoder makes of them."""

    format: Literal["json", "npy", "png"] = Field(
        default="png",
        description="json: images in the body; npy: a float32 (n, C, H, W) .npy file; png: "
        "originals (top row) above reconstructions (bottom row)",
    )


class DecodeRequest(_Request):
    """Decode latent codes to images with the model's decoder."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"latents": [[0.0, 0.5, -0.5, 1.0]], "format": "png"}]},
    )

    model: ModelName = None
    version: Version = None
    latents: list[LatentRow] = Field(
        fail_fast=True,
        min_length=1,
        max_length=_HARD_IMAGES,
        description=f"codes of shape (n, d), finite, |value| <= {LATENT_BOUND:g}",
    )
    format: Literal["json", "npy", "png"] = Field(
        default="png",
        description="json: images (n, C, H, W) in [0, 1] in the body; npy: the same as a float32 "
        ".npy file; png: one grid image",
    )


class LatentsResponse(BaseModel):
    """Latent codes of the given images (``/encode``, ``format=json``)."""

    model: str
    version: int = Field(description="potential version whose bundle answered")
    latents: list[list[float]] = Field(description="shape (n, d)")


class ImagesResponse(BaseModel):
    """Decoded images (``/decode`` and ``/reconstruct``, ``format=json``)."""

    model: str
    version: int = Field(description="potential version whose bundle answered")
    images: list[list[list[list[float]]]] = Field(description="shape (n, C, H, W), in [0, 1]")


class _Out(BaseModel):
    """A response read from the service's records by their attributes.

    ``JobOut.model_validate(job)`` takes a ``JobRecord`` as it is (nested records too, and
    the fields named elsewhere through their ``validation_alias``), so no field is copied by
    hand; JSON of the response validates by the field names.
    """

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


class AccuracyOut(_Out):
    """An independent accuracy check (docs/solver.md); exact when ``n_samples`` is 0."""

    l1: float
    max_rel_error: float
    empty_cells: int
    noise_floor: float
    n_samples: int


class TrainProgressOut(_Out):
    """Progress of a training job (after its last finished epoch)."""

    epoch: int = Field(description="epochs done (joint + decoder)")
    epochs: int = Field(description="planned epochs at most (a plateau ends the joint phase early)")
    phase: str = Field(description="joint (encoder and decoder) or decoder (encoder frozen)")
    loss: float = Field(description="mean training L2 (MSE per pixel) of the last epoch")
    n_images: int = Field(description="training images")
    elapsed: float = Field(description="seconds of training")


class JobOut(_Out):
    """A fit or train job and its progress."""

    id: int
    model: str = Field(description="the model the job fits, or trains and then registers")
    kind: str
    status: str
    target_l1: float = Field(validation_alias=AliasPath("config", "fit", "target_l1"))
    iteration: int
    elapsed: float = Field(description="seconds of fitting")
    train_l1: float | None
    accuracy: AccuracyOut | None = Field(description="last independent check")
    eta: float | None = Field(description="estimated seconds to the target, if known")
    checkpoint_iteration: int | None
    resumed_from: int | None
    reason: str | None
    error: str | None
    created: float
    updated: float | None
    dataset: str | None = Field(
        default=None,
        validation_alias=AliasPath("train_plan", "data", "title"),
        description="train jobs: the dataset's name",
    )
    training: TrainProgressOut | None = Field(
        default=None,
        validation_alias="train_progress",
        description="train jobs: epoch and loss (null before the first epoch)",
    )


class ModelStatus(_Out):
    """A model, its published potential and its latest job."""

    name: str
    n_latents: int
    dim: int
    created: float
    default: bool
    published_version: int
    served_version: int | None
    ready: bool
    accuracy: AccuracyOut | None = Field(description="check of the published potential")
    served_accuracy: AccuracyOut | None = Field(
        default=None, description="check of the potential this server answers with"
    )
    classes: list[int] = Field(
        default_factory=list, description="labels usable as label= (empty: the bundle has none)"
    )
    class_names: list[str] | None = Field(
        default=None,
        description="the name of each label in classes, in the same order (null: the bundle "
        "names none)",
    )
    image_shape: list[int] | None = Field(
        default=None, description="(C, H, W) of the model's images, once it is served"
    )
    job: JobOut | None
    problem: str | None = Field(
        default=None,
        description="what is wrong when the model is served degraded or not at all "
        "(a damaged potential and the version served instead, a bundle that does not load)",
    )


class ModelListResponse(BaseModel):
    """Every model, and which one answers when no ``model`` is named."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"default_model": "digits", "models": [], "jobs": []}]}
    )

    default_model: str | None
    models: list[ModelStatus]
    jobs: list[JobOut] = Field(description="queued or running jobs (e.g. training)")
    worker: WorkerOut | None = Field(
        default=None, description="the supervised fit worker (null: none in this process)"
    )


class FitRequest(_Request):
    """Start a refit of a model (defaults: the server's fit settings)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"target_l1": 0.03, "time_budget": 600, "replace": True}]},
    )

    target_l1: FiniteFloat | None = Field(
        default=None,
        gt=0,
        lt=2,
        description="stop when the L1 error of the cell measures, checked on an independent "
        "sample, is at most this (default: the server's AEOT_TARGET_L1); the new potential "
        "is published only if it beats the served one",
    )
    seed: Seed | None = Field(
        default=None, description="seed of the fit's sample streams (default: AEOT_FIT_SEED)"
    )
    max_iter: Int | None = Field(
        default=None, ge=1, description="iterations at most (default: AEOT_FIT_MAX_ITER)"
    )
    time_budget: FiniteFloat | None = Field(
        default=None,
        gt=0,
        description="seconds of fitting at most (default: AEOT_FIT_TIME_BUDGET, unlimited)",
    )
    method: Literal["auto", "exact", "newton", "adam"] | None = Field(
        default=None,
        description="fit method (default: AEOT_FIT_METHOD): auto (exact geometry in 2D and "
        "3D, Monte Carlo Newton otherwise), exact (d = 2 or 3 only), newton or adam",
    )
    singular_rule: str | None = Field(
        default=None,
        max_length=64,
        description="singular threshold of the new potential (default: AEOT_SINGULAR_RULE): "
        "auto, gap[:min_regular], quantile[:q], fixed:radians or clusters",
        examples=["clusters"],
    )
    replace: bool = Field(default=False, description="cancel an active job of the model first")


class _TrainRequestBase(_Request):
    """Train an autoencoder on a dataset under the server's data root, then fit its OT map."""

    dataset: str = Field(
        min_length=1,
        max_length=512,
        description="path relative to the data root: an IDX directory (MNIST-style), a "
        ".npy/.npz file or an image folder",
        examples=["mnist"],
    )


def _train_field(option: Option) -> tuple[Any, Any]:
    """The request field of a training option: its type, bounds and help as the run has them."""
    bounds: dict[str, Any] = {"ge": option.minimum, "le": option.api_maximum}
    if option.name == "image_size":
        side = Annotated[Int, Field(**bounds)]
        kind: Any = Annotated[list[side], Field(min_length=2, max_length=2)]  # type: ignore[valid-type]
        bounds = {}
    elif option.name == "class_names":
        name = Annotated[str, Field(min_length=1, max_length=MAX_CLASS_NAME)]
        kind = Annotated[list[name], Field(min_length=1, max_length=MAX_CLASSES)]  # type: ignore[valid-type]
    elif option.choices:
        kind = option.base
    else:
        kind = Int
    if option.optional:
        kind = kind | None
    return kind, Field(default=option.default, description=option.help, **bounds)


if TYPE_CHECKING:
    TrainRequest = _TrainRequestBase
else:  # the dataset and every training option a request may set (models.options)
    TrainRequest = create_model(
        "TrainRequest",
        __base__=_TrainRequestBase,
        __doc__=_TrainRequestBase.__doc__,
        **{
            option.name: _train_field(option)
            for cls in (DataOptions, TrainOptions)
            for option in options_of(cls)
            if option.api
        },
    )


class ErrorResponse(BaseModel):
    """Every error answer (4xx, 503): one human-readable message."""

    detail: str = Field(description="what was wrong and what was expected")


class HealthResponse(BaseModel):
    """Liveness."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class WorkerOut(_Out):
    """The fit worker this server supervises."""

    status: Literal["starting", "running", "restarting", "stopped"] = Field(
        description="restarting: it died and a new one starts after a back-off"
    )
    restarts: int = Field(description="workers started after an unexpected exit")
    last_exit: str | None = Field(description="how the last worker ended, e.g. 'signal 9'")
    last_exit_at: float | None = Field(description="when (seconds since the epoch)")


class StoreOut(BaseModel):
    """The store's health: its catalogue, and whether it takes writes."""

    status: Literal["ok", "degraded", "read-only"] = Field(
        description="degraded: the catalogue cannot be read (reads are answered from what is "
        "loaded while it is rebuilt from the model directories); read-only: writes answer 507"
    )
    problem: str | None = Field(default=None, description="what is wrong now, if anything")
    rebuilt: str | None = Field(
        default=None,
        description="when and why the catalogue was last rebuilt from the model directories",
    )


class ReadyResponse(BaseModel):
    """Readiness: the default model serves a potential (and the worker's state, if any)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ready": True, "default_model": "digits", "version": 5}]}
    )

    ready: bool
    default_model: str | None
    version: int | None
    reason: str | None = Field(default=None, description="why not ready, or what is degraded")
    worker: WorkerOut | None = Field(
        default=None, description="the supervised fit worker (null: none in this process)"
    )
    store: StoreOut | None = Field(default=None, description="the store's health")
