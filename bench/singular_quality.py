"""Is the singular set right? Labels of the training data as the judge.

For each dataset the OT map is fitted to labelled latents (the 25-Gaussian grid: the points
themselves, modes as labels; digits: the embedded default model; MNIST, Fashion-MNIST: an
autoencoder's latents, a seeded subset of them when ``--subset`` is below N), one Monte Carlo
pass gives the adjacency, and every singular rule classifies the same observed pairs. Labels
are used only here, to score; no rule sees them.

- **scores**: ROC AUC of each per-pair score (dihedral angle in the standard, raw and valley
  frames, latent distance, the angle relative to both cells' median neighbour angle, the facet
  measure and the mass-centre stretch |y_i - y_j| / |c_i - c_j|) for "the two training images
  have different labels";
- **rules**: per rule, the flagged share, precision and recall of the singular flag for that
  event; the share of T~ samples putting more than ``--mix-weight`` of their blend weight on
  targets of another label than the top cell's (and the mean such weight); along segments
  between the mass centres of random training pairs, the share of label changes (the
  project's classifier on the decoded T~ frames; nearest mode on the grid) within one step of
  a reported crossing, and the share of crossings with no label change within one step.

Prints one JSON object per line and two markdown tables (written to ``--out`` too).

    python bench/singular_quality.py --datasets grid digits
    python bench/singular_quality.py --datasets mnist --models /path/with/bundle-mnist

Without a ``bundle-<name>`` in ``--models`` the script trains a small autoencoder (on
``--ae-subset`` images) and a classifier of its own (on ``--classifier-subset`` images, by
default as many) into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine_info
from bench.mode_collapse import MEANS, grid_samples
from models import (
    AutoencoderConfig,
    Bundle,
    ClassifierTrainConfig,
    TrainConfig,
    load_bundle,
    load_classifier,
    load_digits_dataset,
    load_idx_dataset,
    save_classifier,
    train_and_save,
    train_classifier,
)
from models.classifier import features_and_predictions
from models.train import train_default_digits
from solver import (
    DEFAULT_BLEND_MARGIN,
    DEFAULT_RULE,
    AngleFrame,
    ExtendedMap,
    FitConfig,
    FixedThreshold,
    GapThreshold,
    QuantileThreshold,
    ThresholdRule,
    atomic_write_bytes,
    build_extended_map,
    diffusion_distances,
    diffusion_embedding,
    dihedral_angles,
    find_singular_set,
    fit,
    frame_angles,
    make_problem,
    nearest_neighbours,
)

NAME = "singular_quality"
Labeler = Callable[[np.ndarray], np.ndarray]
# Rules compared: (threshold rule, frame; None: the rule's default frame). The default is the
# gap rule falling back to the spectral clusters' share, in the diffusion frame (the valley
# frame and the median when the targets form one spectral cluster); before it, the gap rule
# fell back to the median, in the valley frame (and before that in the standard frame).
MEDIAN_FALLBACK = GapThreshold(fallback=QuantileThreshold(q=0.5))
# Every row blends with the default blend margin except the default rule's rows at other
# margins (1: blending across every regular facet, the map before the margin existed).
RULES: dict[str, tuple[ThresholdRule, AngleFrame | None, float]] = {
    "default": (DEFAULT_RULE, None, DEFAULT_BLEND_MARGIN),
    "default rule, blend margin 0.4": (DEFAULT_RULE, None, 0.4),
    "default rule, blend margin 0.5": (DEFAULT_RULE, None, 0.5),
    "default rule, blend margin 0.7": (DEFAULT_RULE, None, 0.7),
    "default rule, blend margin 1 (every regular facet)": (DEFAULT_RULE, None, 1.0),
    "gap or median, diffusion frame": (MEDIAN_FALLBACK, "diffusion", DEFAULT_BLEND_MARGIN),
    "previous default (gap or median, valley frame)": (
        MEDIAN_FALLBACK,
        "valley",
        DEFAULT_BLEND_MARGIN,
    ),
    "gap or median, standard frame": (MEDIAN_FALLBACK, "standard", DEFAULT_BLEND_MARGIN),
    "paper: fixed 0.75 rad, raw frame": (FixedThreshold(radians=0.75), "raw", DEFAULT_BLEND_MARGIN),
}
GOALS = {"auc": 0.95, "precision": 0.9, "recall": 0.85, "mixing": 0.02}


@dataclass(frozen=True, kw_only=True)
class Case:
    """One labelled OT problem to judge.

    Attributes:
        name: dataset name.
        targets: the problem's (merged) targets, shape ``(N, d)``, float32.
        labels: label of each target, shape ``(N,)``, int64.
        heights: fitted heights, shape ``(N,)``.
        labeler: latents ``(M, d)`` to labels ``(M,)`` (decode + classify, or nearest mode).
        info: how the case was built (model, fit figures).

    """

    name: str
    targets: np.ndarray
    labels: np.ndarray
    heights: np.ndarray
    labeler: Labeler
    info: dict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["grid", "digits", "mnist", "fashion-mnist"])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    p.add_argument("--data-root", default=str(shared))
    p.add_argument("--models", default="bench/out", help="bundle-<name>/, classifier-<name>")
    p.add_argument("--subset", type=int, default=3000, help="latents the OT is fitted to")
    p.add_argument("--ae-subset", type=int, default=3000, help="images, without --models")
    p.add_argument(
        "--classifier-subset",
        type=int,
        help="images the judging classifier trains on when none is found (default: --ae-subset)",
    )
    p.add_argument("--ae-epochs", type=int, default=12, help="joint epochs, without --models")
    p.add_argument("--target-l1", type=float, default=0.1)
    p.add_argument("--time-budget", type=float, default=900.0)
    p.add_argument("--samples-per-cell", type=int, default=64, help="Monte Carlo pass")
    p.add_argument("--mix-samples", type=int, default=20000)
    p.add_argument("--mix-weight", type=float, default=0.01)
    p.add_argument("--paths", type=int, default=100)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/out")
    p.add_argument(
        "--full-spectrum",
        action="store_true",
        help="also the spectral structure of all the model's latents, not only the OT subset",
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- cases


def fit_heights(args: argparse.Namespace, targets: np.ndarray, cache: Path) -> tuple:
    """Problem and fitted heights (cached per exact targets); returns (problem, heights, info)."""
    problem = make_problem(targets)
    digest = hashlib.sha256(np.ascontiguousarray(problem.targets).tobytes()).hexdigest()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            if str(f["digest"]) == digest:
                return problem, f["heights"], {**json.loads(str(f["info"])), "reused": True}
    config = FitConfig(target_l1=args.target_l1, time_budget=args.time_budget, seed=args.seed)
    result = fit(problem, config)
    info = {
        "n_targets": problem.n_targets,
        "dim": problem.dim,
        "converged": result.converged,
        "seconds": round(result.elapsed, 1),
        "l1": result.accuracy.l1 if result.accuracy else None,
    }
    buf = io.BytesIO()
    np.savez(buf, heights=result.heights, digest=np.array(digest), info=np.array(json.dumps(info)))
    atomic_write_bytes(cache, buf.getvalue())
    return problem, result.heights, info


def _merged_labels(problem, labels: np.ndarray) -> np.ndarray:
    """Label of each merged target (duplicates of one latent: the last row's label)."""
    out = np.empty(problem.n_targets, dtype=np.int64)
    out[problem.inverse] = labels
    return out


def grid_case(args: argparse.Namespace, out: Path) -> Case:
    """512 points of the 25-Gaussian grid; the label of a point is its nearest mode."""
    real = grid_samples(512, np.random.default_rng(args.seed))

    def nearest_mode(z: np.ndarray) -> np.ndarray:
        return np.linalg.norm(z[:, None, :] - MEANS[None], axis=2).argmin(axis=1)

    problem, heights, info = fit_heights(args, real, out / "singular-ot-grid.npz")
    labels = _merged_labels(problem, nearest_mode(real))
    return Case(
        name="grid",
        targets=problem.targets,
        labels=labels,
        heights=heights,
        labeler=nearest_mode,
        info={"model": "none (2D points)", "fit": info},
    )


def _classifier_labeler(bundle: Bundle, clf) -> Labeler:
    def labeler(z: np.ndarray) -> np.ndarray:
        images = bundle.decode(np.asarray(z, dtype=np.float32))
        return features_and_predictions(clf.model, images)[1]

    return labeler


def digits_case(args: argparse.Namespace, out: Path) -> Case:
    """The embedded default model (all 1797 digits, d = 8) and a classifier on 8x8 digits."""
    path = out / "bundle-digits"
    bundle = load_bundle(path) if path.is_dir() else train_default_digits(path, seed=args.seed)
    clf_path = out / "classifier-digits.safetensors"
    if clf_path.is_file():
        clf = load_classifier(clf_path)
    else:
        config = ClassifierTrainConfig(epochs=40, seed=args.seed, progress=False)
        clf = train_classifier(
            load_digits_dataset(split="train"), config, test=load_digits_dataset(split="test")
        )
        save_classifier(clf_path, clf)
    problem, heights, info = fit_heights(args, bundle.latents, out / "singular-ot-digits.npz")
    return Case(
        name="digits",
        targets=problem.targets,
        labels=_merged_labels(problem, np.asarray(bundle.labels)),
        heights=heights,
        labeler=_classifier_labeler(bundle, clf),
        info={"model": str(path), "classifier_accuracy": clf.test_accuracy, "fit": info},
    )


def image_case(args: argparse.Namespace, name: str, out: Path) -> Case:
    """A trained autoencoder's latents (a seeded subset of ``--subset``) and its classifier."""
    directory = Path(args.data_root) / name
    train = load_idx_dataset(directory, split="train", name=name)
    models = Path(args.models)
    # --models first, then a model an earlier run trained into --out, else train one there.
    source = _first_existing(models / f"bundle-{name}", out / f"bundle-{name}")
    if source is not None:
        bundle = load_bundle(source)
    else:  # a small model of our own: --ae-subset images, --ae-epochs joint epochs
        source = out / f"bundle-{name}"
        arch = AutoencoderConfig(image_shape=train.image_shape, latent_dim=32)
        config = TrainConfig(
            max_joint_epochs=args.ae_epochs, decoder_epochs=2, seed=args.seed, progress=False
        )
        data = train.subset(args.ae_subset, args.seed)
        bundle = train_and_save(data, arch, config, source)
    clf_path = _first_existing(
        models / f"classifier-{name}.safetensors", out / f"classifier-{name}.safetensors"
    )
    if clf_path is not None:
        clf = load_classifier(clf_path)
    else:
        test = load_idx_dataset(directory, split="test", name=name)
        clf_config = ClassifierTrainConfig(epochs=2, seed=args.seed, progress=False)
        images = args.classifier_subset or args.ae_subset
        clf = train_classifier(train.subset(images, args.seed), clf_config, test=test)
        save_classifier(out / f"classifier-{name}.safetensors", clf)
    z, labels = bundle.latents, np.asarray(bundle.labels)
    rows = np.random.default_rng(args.seed).permutation(len(z))[: args.subset]
    rows = np.sort(rows)
    spectrum = spectrum_figures(z, labels, args.seed) if args.full_spectrum else None
    cache = out / f"singular-ot-{name}-{len(rows)}.npz"
    problem, heights, info = fit_heights(args, z[rows], cache)
    return Case(
        name=name,
        targets=problem.targets,
        labels=_merged_labels(problem, labels[rows]),
        heights=heights,
        labeler=_classifier_labeler(bundle, clf),
        info={
            "model": str(source),
            "bundle_latents": len(z),
            "l2_after_freeze": bundle.metrics.l2_after_freeze if bundle.metrics else None,
            "classifier_accuracy": clf.test_accuracy,
            "fit": info,
            "full_spectrum": spectrum,
        },
    )


def _first_existing(*paths: Path) -> Path | None:
    """The first of ``paths`` that exists, else ``None``."""
    return next((p for p in paths if p.exists()), None)


def spectrum_figures(latents: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Spectral clusters of all ``latents`` and how the diffusion distance ranks label changes.

    The pairs are each latent's 10 nearest neighbours (the OT subset's adjacency needs a fit
    of all N); returns the clusters found, their label purity and the ROC AUC of the
    diffusion and the latent distance for "different labels".
    """
    t0 = time.perf_counter()
    y = np.asarray(latents, dtype=np.float64)
    emb = diffusion_embedding(y, seed=seed)
    near = nearest_neighbours(y, y, 11)
    pairs = np.sort(np.stack([np.repeat(np.arange(len(y)), 10), near[:, 1:].ravel()], 1), 1)
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    different = labels[pairs[:, 0]] != labels[pairs[:, 1]]
    majority = sum(np.bincount(labels[emb.clusters == c]).max() for c in range(emb.n_clusters))
    dist = np.linalg.norm(y[pairs[:, 0]] - y[pairs[:, 1]], axis=1)
    return {
        "n_latents": len(y),
        "clusters": emb.n_clusters,
        "clusters_chosen_by": emb.chosen_by,
        "separation": emb.separation,
        "cluster_purity": float(majority / len(y)),
        "knn_pairs": int(pairs.shape[0]),
        "different_share": float(different.mean()),
        "auc_diffusion": float(roc_auc_score(different, diffusion_distances(emb.coords, pairs))),
        "auc_latent_distance": float(roc_auc_score(different, dist)),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ----------------------------------------------------------------------------- measures


def pair_scores(ext: ExtendedMap) -> dict[str, np.ndarray]:
    """Per adjacent pair scores whose size should mean 'different modes', shape ``(P,)`` each."""
    y = ext.targets.astype(np.float64)
    pairs = ext.adjacency.pairs
    i, j = pairs[:, 0], pairs[:, 1]
    angle = frame_angles(y, pairs, "standard")
    dist = np.linalg.norm(y[i] - y[j], axis=1)
    centres = ext.mass_centres
    centre_dist = np.linalg.norm(centres[i] - centres[j], axis=1)
    typical = _cell_medians(ext.n_targets, pairs, angle)
    return {
        "angle (standard frame)": angle,
        "angle (raw frame)": dihedral_angles(y, pairs),
        "angle (valley frame)": frame_angles(y, pairs, "valley"),
        "diffusion distance": frame_angles(y, pairs, "diffusion"),
        "latent distance": dist,
        "angle / cells' median angle": angle / np.sqrt(typical[i] * typical[j]),
        "facet measure (negated)": -ext.adjacency.facet_measures,
        "mass-centre stretch": dist / np.maximum(np.nan_to_num(centre_dist, nan=np.inf), 1e-12),
    }


def _cell_medians(n: int, pairs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Median of ``values`` over each cell's pairs, shape ``(n,)`` (cells without: overall)."""
    cells = np.concatenate([pairs[:, 0], pairs[:, 1]])
    vals = np.concatenate([values, values])
    order = np.lexsort((vals, cells))
    cells, vals = cells[order], vals[order]
    starts = np.searchsorted(cells, np.arange(n), side="left")
    ends = np.searchsorted(cells, np.arange(n), side="right")
    out = np.full(n, float(np.median(values)) if values.size else 1.0)
    has = ends > starts
    lo, hi = starts[has], ends[has] - 1
    out[has] = 0.5 * (vals[(lo + hi) // 2] + vals[(lo + hi + 1) // 2])
    return out


def with_rule(
    base: ExtendedMap, rule: ThresholdRule, frame: AngleFrame | None, blend_margin: float
) -> ExtendedMap:
    """The same pass (adjacency, mass centres) with another rule's singular set and margin."""
    singular = find_singular_set(base.targets, base.adjacency, rule, frame=frame, seed=0)
    return base.replace(singular_set=singular, blend_margin=blend_margin)


def flag_metrics(ext: ExtendedMap, different: np.ndarray) -> dict:
    """Flagged share, precision and recall of the singular flag for 'different labels'."""
    flag = ext.singular_set.singular
    hits = int(np.count_nonzero(flag & different))
    return {
        "threshold": ext.singular_set.threshold,
        "gap_ratio": ext.singular_set.gap_ratio,
        "frame": ext.singular_set.frame,
        "flagged": float(flag.mean()) if flag.size else 0.0,
        "precision": hits / max(int(flag.sum()), 1),
        "recall": hits / max(int(different.sum()), 1),
    }


def mixing(ext: ExtendedMap, labels: np.ndarray, args: argparse.Namespace, spacing: float) -> dict:
    """Share of T~ samples blending more than ``--mix-weight`` across labels, and novelty.

    The novelty is the mean distance from T~(z) to the top cell's target y_i (= T(z)), over
    ``spacing`` (:func:`median_spacing` of the targets): what T~ adds to T.
    """
    z = ext.source.sample(args.mix_samples, args.seed + 3)
    cells, w = ext.blend_weights(z)
    foreign = (labels[cells] != labels[cells[:, :1]]) * w
    share = foreign.sum(axis=1)
    mixed = float(np.mean(share > args.mix_weight))
    y = ext.targets.astype(np.float64)
    shift = np.linalg.norm(np.einsum("mk,mkd->md", w, y[cells]) - y[cells[:, 0]], axis=1)
    return {
        "mixing": mixed,
        "foreign_weight": float(share.mean()),
        "novelty": float(shift.mean() / spacing),
    }


def median_spacing(targets: np.ndarray) -> float:
    """Median distance from a target to its nearest other target (the targets are distinct)."""
    y = targets.astype(np.float64)
    near = nearest_neighbours(y, y, 2)
    other = np.where(near[:, 0] == np.arange(len(y)), near[:, 1], near[:, 0])
    return float(np.median(np.linalg.norm(y - y[other], axis=1)))


def path_metrics(ext: ExtendedMap, case: Case, args: argparse.Namespace) -> dict:
    """Label changes along interpolations reported as crossings, and crossings without one."""
    rng = np.random.default_rng(args.seed + 4)
    valid = np.flatnonzero(ext.has_centre)
    changes = caught = crossings = idle = 0
    for _ in range(args.paths):
        a, b = rng.choice(valid, size=2, replace=False)
        path = ext.interpolate_indices(int(a), int(b), args.steps)
        lab = case.labeler(path.latents)
        changed = np.flatnonzero(lab[1:] != lab[:-1])  # change between step k and k + 1
        steps = np.array([np.searchsorted(path.t, c.t) for c in path.crossings], dtype=np.int64)
        changes += changed.size
        caught += int(sum(np.any(np.abs(steps - (k + 1)) <= 1) for k in changed))
        crossings += steps.size
        idle += int(sum(not np.any(np.abs(changed + 1 - s) <= 1) for s in steps))
    return {
        "label_changes": changes,
        "changes_at_crossings": caught / max(changes, 1),
        "crossings": crossings,
        "crossings_without_change": idle / max(crossings, 1),
    }


def judge(case: Case, args: argparse.Namespace, base: dict) -> list[dict]:
    """Score AUCs once and every rule's flag, mixing and path figures; returns the rows."""
    t0 = time.perf_counter()
    n = case.targets.shape[0]
    ext = build_extended_map(
        case.targets, case.heights, n_samples=args.samples_per_cell * n, seed=args.seed + 1
    )
    pairs = ext.adjacency.pairs
    different = case.labels[pairs[:, 0]] != case.labels[pairs[:, 1]]
    aucs = {k: float(roc_auc_score(different, v)) for k, v in pair_scores(ext).items()}
    head = {
        **base,
        "kind": "scores",
        "pairs": int(pairs.shape[0]),
        "different_share": float(different.mean()),
        "auc": aucs,
        "case": case.info,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    emit(head)
    rows = [head]
    spacing = median_spacing(ext.targets)
    for rule_name, (rule, frame, margin) in RULES.items():
        t0 = time.perf_counter()
        var = with_rule(ext, rule, frame, margin)
        chosen = var.singular_set.rule.name
        row = {**base, "kind": "rule", "rule": rule_name, "chosen": chosen}
        row["clusters"] = var.singular_set.clusters
        row["blend_margin"] = margin
        row["singular_set_seconds"] = round(time.perf_counter() - t0, 2)
        row |= flag_metrics(var, different) | mixing(var, case.labels, args, spacing)
        row |= path_metrics(var, case, args)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        emit(row)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def markdown(rows: list[dict]) -> str:
    """Two tables: the scores' ROC AUC per dataset, then the rules' figures."""
    heads = [r for r in rows if r["kind"] == "scores"]
    names = list(heads[0]["auc"]) if heads else []
    lines = ["| score | " + " | ".join(r["dataset"] for r in heads) + " |"]
    lines.append("|---|" + "---:|" * len(heads))
    for s in names:
        lines.append(f"| {s} | " + " | ".join(f"{r['auc'][s]:.3f}" for r in heads) + " |")
    lines.append(
        "| *pairs (different labels)* | "
        + " | ".join(f"{r['pairs']} ({100 * r['different_share']:.0f} %)" for r in heads)
        + " |"
    )
    for r in heads:
        full = r["case"].get("full_spectrum")
        if full:
            lines.append(
                f"\n{r['dataset']}, all {full['n_latents']} latents: {full['clusters']} spectral "
                f"clusters (label purity {full['cluster_purity']:.3f}); over each latent's 10 "
                f"nearest neighbours ({full['knn_pairs']} pairs, "
                f"{100 * full['different_share']:.1f} % with different labels) ROC AUC "
                f"{full['auc_diffusion']:.3f} for the diffusion distance, "
                f"{full['auc_latent_distance']:.3f} for the latent distance"
            )
    lines += [
        "",
        "| dataset | rule | threshold | flagged | precision | recall | T~ mixing | T~ novelty "
        "| changes at crossings | crossings w/o change |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["kind"] == "rule"):
        lines.append(
            f"| {r['dataset']} | {r['rule']}: {_chosen(r)} | {r['threshold']:.3g} "
            f"| {100 * r['flagged']:.1f} % "
            f"| {r['precision']:.3f} | {r['recall']:.3f} | {100 * r['mixing']:.1f} % "
            f"| {r['novelty']:.3f} "
            f"| {100 * r['changes_at_crossings']:.0f} % of {r['label_changes']} "
            f"| {100 * r['crossings_without_change']:.0f} % of {r['crossings']} |"
        )
    return "\n".join(lines)


def _chosen(row: dict) -> str:
    """What a rule row applied: its frame, the rule chosen and the clusters found."""
    clusters = f", {row['clusters']} clusters" if row.get("clusters") else ""
    return f"{row['frame']} frame, {row['chosen']}{clusters}, blend margin {row['blend_margin']:g}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rows: list[dict] = []
    for name in args.datasets:
        base = {"name": NAME, "dataset": name, "machine": machine_info()}
        base["load_average"] = os.getloadavg()
        if name == "grid":
            case = grid_case(args, out)
        elif name == "digits":
            case = digits_case(args, out)
        else:
            case = image_case(args, name, out)
        rows += judge(case, args, base)
    table = markdown(rows)
    atomic_write_bytes(out / "singular_quality.md", (table + "\n").encode())
    print(table)


if __name__ == "__main__":
    main()
