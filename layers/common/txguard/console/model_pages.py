"""The console's Models pages and actions: model versions with their metrics and plots, the detector versions,
training a candidate, and shadow / promote / retire / roll back, each behind a confirmation page.

Every change goes through the model registry (storage/models.py), which writes the new detector version in the
same transaction. An action is two POSTs, each with the session's CSRF token: the first shows what would change
and changes nothing; the second (`confirm=yes`, with the detector version the confirmation was shown for)
changes it, unless the detector changed in between (409, nothing changed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions

from txguard import literals
from txguard.console import charts, web
from txguard.domain import Decision
from txguard.errors import BadInput, Conflict, TxguardError, Unavailable, shorten
from txguard.models import artifact_store
from txguard.storage import detector_versions
from txguard.storage import models as registry

if TYPE_CHECKING:
    from txguard.console.app import Context

ACTIONS = ("shadow", "promote", "retire")
MODEL_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
MODELS_SHOWN = 200  # the newest versions the Models page lists (each row carries its whole report)
MAX_GAP_DAYS = 90
MAX_SEED = 2**31 - 1
# What each action does, in the words of the confirmation page.
ACTION_WORDS = {
    "shadow": "score every new decision with this model as a shadow (recorded, never deciding)",
    "promote": "make this model the champion: it scores every new decision and can flag on its own",
    "retire": "retire this model: it no longer scores anything",
    "rollback": "retire the champion and bring back the champion it replaced (or, if it replaced none, leave the "
    "rules deciding alone)",
}


class TrainingNotHere(TxguardError):
    """This deployment cannot train in the request (no training library, no TrainFunction configured): 501."""

    code = "training_not_here"


@dataclass(frozen=True)
class Summary:
    """How a scorer ranks a model's validation window (None where the report has no value: undefined)."""

    roc_auc: float | None
    average_precision: float | None
    cp_at_k: float | None  # Card Precision@k, k = the report's k (100 by default)
    f1: float | None
    precision: float | None
    recall: float | None
    threshold: float | None  # the best-F1 threshold: the model's decision threshold


def _number(value: Any) -> float | None:
    """A JSON number (stored features are read as Decimal) as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return float(value)


def _section(metrics: Any, name: str) -> dict[str, Any]:
    part = metrics.get(name) if isinstance(metrics, dict) else None
    return part if isinstance(part, dict) else {}


def ranking_summary(ranking: dict[str, Any]) -> Summary:
    """A ranking of the training report (txguard.models.training.Ranking.as_dict())."""
    return Summary(
        _number(ranking.get("roc_auc")),
        _number(ranking.get("average_precision")),
        _number(ranking.get("card_precision_at_k")),
        _number(ranking.get("f1")),
        _number(ranking.get("precision")),
        _number(ranking.get("recall")),
        _number(ranking.get("threshold")),
    )


def summary(metrics: dict[str, Any]) -> Summary:
    """The model's own numbers on its validation window (`metrics["validation"]` of the registry row)."""
    return ranking_summary(_section(metrics, "validation"))


def day(value: Any) -> str:
    """A date, a timestamp or epoch ms as its UTC day, YYYY-MM-DD ("" for None)."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC).date().isoformat()
    if isinstance(value, datetime):
        return value.astimezone(UTC).date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _four(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------------------------------------- pages --


def models_page(ctx: Context, cur: psycopg2.extensions.cursor) -> web.Response:
    """Every model version with its headline metrics, and the detector versions, newest first."""
    versions = registry.list_versions(cur, limit=MODELS_SHOWN)
    rows = [_version_row(m) for m in versions]
    detectors = detector_versions.history(cur)
    return ctx.page(
        "models.html",
        versions=versions,
        summaries={m.version: summary(m.metrics or {}) for m in versions},
        detectors=detectors,
        done=ctx.request.query.get("done"),
        shown=MODELS_SHOWN,
        tables={
            "model_versions": {
                "columns": [
                    "version",
                    "name",
                    "status",
                    "created_by",
                    "created_at",
                    "train_from",
                    "train_to",
                    "valid_from",
                    "valid_to",
                    "label_cutoff",
                    "roc_auc",
                    "average_precision",
                    "cp_at_k",
                    "f1",
                ],
                "rows": rows,
            },
            "detector_versions": _detector_table(detectors),
        },
    )


def _version_row(m: Any) -> list[Any]:
    s = summary(m.metrics or {})
    return [
        m.version,
        m.name,
        m.status,
        m.created_by,
        m.created_at.isoformat(),
        _iso(m.train_from),
        _iso(m.train_to),
        _iso(m.valid_from),
        _iso(m.valid_to),
        _iso(m.label_cutoff),
        _four(s.roc_auc),
        _four(s.average_precision),
        _four(s.cp_at_k),
        _four(s.f1),
    ]


def _detector_table(detectors: list[detector_versions.DetectorVersion]) -> dict[str, Any]:
    return {
        "columns": ["version", "rule_set_version", "champion", "shadows", "created_at", "created_by", "comment"],
        "rows": [
            [
                d.version,
                d.rule_set_version,
                "" if d.champion_model_version is None else d.champion_model_version,
                " ".join(str(v) for v in d.shadow_model_versions),
                d.created_at.isoformat(),
                d.created_by,
                d.comment,
            ]
            for d in detectors
        ],
    }


def pr_points(metrics: dict[str, Any]) -> list[tuple[float, float, float | None]]:
    """(recall, precision, threshold) of the stored precision-recall curve (`validation.precision_recall_curve`,
    highest threshold first, at most 200 points)."""
    curve = _section(metrics, "validation").get("precision_recall_curve")
    points: list[tuple[float, float, float | None]] = []
    for point in curve if isinstance(curve, list) else []:
        if isinstance(point, dict):
            recall, precision = _number(point.get("recall")), _number(point.get("precision"))
            if recall is not None and precision is not None:
                points.append((recall, precision, _number(point.get("threshold"))))
    return points


def confusion(metrics: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(tp, fp, fn, tn) on the validation window at the model's threshold, or None when not reported."""
    cm = _section(metrics, "validation").get("confusion_matrix")
    if not isinstance(cm, dict):
        return None
    counts = [
        v for v in (cm.get(k) for k in ("tp", "fp", "fn", "tn")) if isinstance(v, int) and not isinstance(v, bool)
    ]
    if len(counts) != 4:
        return None
    tp, fp, fn, tn = counts
    return tp, fp, fn, tn


def importance(metrics: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """(feature, total gain, share of all gain) largest first, as the report lists them."""
    raw = metrics.get("feature_importance")
    rows: list[tuple[str, float, float | None]] = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and isinstance(item.get("feature"), str):
            gain = _number(item.get("gain"))
            if gain is not None:
                rows.append((item["feature"], gain, _number(item.get("share"))))
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def threshold_rows(thresholds: Any) -> list[list[str]]:
    """The threshold table: at each score level, what flagging at it would give on the validation window."""
    rows = []
    for item in thresholds if isinstance(thresholds, list) else []:
        if isinstance(item, dict):
            flagged = item.get("flagged")
            rows.append(
                [
                    _four(_number(item.get("score"))),
                    str(flagged) if isinstance(flagged, int) else "",
                    _four(_number(item.get("precision"))),
                    _four(_number(item.get("recall"))),
                    _four(_number(item.get("fpr"))),
                ]
            )
    return rows


def model_page(ctx: Context, cur: psycopg2.extensions.cursor, version: int) -> web.Response:
    """One model version: its training report (metrics against the baseline and the champion, PR curve,
    confusion matrix, feature importance, threshold table), the detector versions that used it, and the actions
    its status allows."""
    m = registry.get(cur, version)
    metrics = m.metrics or {}
    s = summary(metrics)
    points = pr_points(metrics)
    cm = confusion(metrics)
    ranked = importance(metrics)
    at_threshold = (s.recall, s.precision) if s.recall is not None and s.precision is not None else None
    detectors = [
        d
        for d in detector_versions.history(cur)
        if d.champion_model_version == version or version in d.shadow_model_versions
    ]
    k = _section(metrics, "validation").get("k", 100)
    return ctx.page(
        "model.html",
        m=m,
        s=s,
        k=k,
        actions=allowed_actions(m.status),
        done=ctx.request.query.get("done"),
        current=detector_versions.current(cur),
        pr_chart=charts.pr_curve(
            f"Precision-recall, model {version} (validation window)", [(r, p) for r, p, _ in points], at_threshold
        )
        if points
        else None,
        cm_chart=charts.confusion_matrix(f"Confusion matrix at threshold {_four(s.threshold)}", *cm) if cm else None,
        importance_chart=charts.horizontal_bars(
            f"Feature importance (total gain), model {version}",
            [n for n, _, _ in ranked[:25]],
            [g for _, g, _ in ranked[:25]],
        )
        if ranked
        else None,
        tables={
            "comparison": {
                "columns": ["scorer", "roc_auc", "average_precision", f"cp_at_{k}", "f1", "note"],
                "rows": comparisons(metrics),
            },
            "report": {"columns": ["metric", "value"], "rows": report_rows(metrics)},
            "pr_curve": {
                "columns": ["recall", "precision", "threshold"],
                "rows": [[f"{r:.6f}", f"{p:.6f}", "" if t is None else f"{t:.6f}"] for r, p, t in points],
            },
            "confusion_matrix": {
                "columns": ["labelled", "flagged", "not_flagged"],
                "rows": [] if cm is None else [["fraud", cm[0], cm[2]], ["genuine", cm[1], cm[3]]],
            },
            "feature_importance": {
                "columns": ["feature", "gain", "share"],
                "rows": [[n, f"{g:.6g}", "" if share is None else f"{share:.4f}"] for n, g, share in ranked],
            },
            "thresholds": {
                "columns": ["score", "flagged", "precision", "recall", "false_positive_rate"],
                "rows": threshold_rows(m.thresholds),
            },
            "detector_versions": _detector_table(detectors),
        },
    )


def report_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Every number of the report that is not drawn elsewhere, as (section.metric, value) rows."""
    rows = []
    for section in ("validation", "training"):
        for key, value in sorted(_section(metrics, section).items()):
            if isinstance(value, int | float | str) and not isinstance(value, bool):
                rows.append([f"{section}.{key}", f"{value:.6g}" if isinstance(value, float) else str(value)])
    return rows


# The scorers the report ranks the same validation rows with, besides the model.
COMPARED = (
    ("baseline", "decision-tree baseline"),
    ("champion", "champion at training time"),
    ("stored_decisions", "the stored decisions' scores"),
)


def comparisons(metrics: dict[str, Any]) -> list[list[str]]:
    """The model against the report's other scorers on the same validation rows; a scorer that could not be
    compared says why."""
    rows = [["this model", *_ranking_cells(summary(metrics)), ""]]
    for key, label in COMPARED:
        other = _section(metrics, key)
        if not other:
            continue
        if other.get("available") is False:
            rows.append([label, "", "", "", "", str(other.get("reason", "not available"))])
            continue
        version = other.get("version")
        name = f"{label} (model {version})" if isinstance(version, int) else label
        rows.append([name, *_ranking_cells(ranking_summary(other)), str(other.get("model", ""))])
    return rows


def _ranking_cells(s: Summary) -> list[str]:
    return [_four(s.roc_auc), _four(s.average_precision), _four(s.cp_at_k), _four(s.f1)]


def allowed_actions(status: str) -> list[str]:
    """The actions the page offers for a model in `status` (the registry has the last word)."""
    return {
        "candidate": ["shadow", "promote", "retire"],
        "shadow": ["promote", "retire"],
        "champion": ["retire"],
        "retired": ["shadow", "promote"],
    }.get(status, [])


# ----------------------------------------------------------------------------------------- training --


@dataclass(frozen=True)
class TrainForm:
    name: str
    until: date
    seed: int
    gap_days: int


def read_train_form(form: dict[str, str]) -> TrainForm:
    """The training form's fields, validated; raises BadInput naming field, value and reason."""
    name = form.get("name", "").strip()
    if not MODEL_NAME.match(name):
        raise BadInput(f"form field 'name' = {shorten(name)!r}: must be 1-64 letters, digits, _ . : -")
    until_text = form.get("until", "").strip()
    try:
        until = datetime.strptime(until_text, "%Y-%m-%d").date()
    except ValueError:
        raise BadInput(f"form field 'until' = {shorten(until_text)!r}: must be a date YYYY-MM-DD") from None
    if until.year < 2000:
        raise BadInput(f"form field 'until' = {until_text!r}: must be 2000-01-01 or later")
    values = []
    for field_name, default, maximum in (("seed", "0", MAX_SEED), ("gap_days", "7", MAX_GAP_DAYS)):
        text = form.get(field_name, "").strip() or default
        try:
            values.append(literals.integer_from_text(text, 0, maximum))
        except ValueError as exc:
            raise BadInput(f"form field {field_name!r} = {shorten(text)!r}: {exc}") from None
    return TrainForm(name, until, values[0], values[1])


def train_page(ctx: Context, cur: psycopg2.extensions.cursor) -> web.Response:
    """The training form."""
    return ctx.page(
        "train.html",
        remote=bool(os.environ.get("TXGUARD_TRAIN_FUNCTION")),
        today=datetime.now(UTC).date().isoformat(),
        started=ctx.request.query.get("started"),
    )


def train_action(ctx: Context, cur: psycopg2.extensions.cursor) -> web.Response:
    """Train a candidate with the form's settings. Locally: now, through the same library call as `txguard
    train` (txguard.models.training.train, on a connection of its own: it reads in one snapshot and registers
    in its own transaction), then its report. In AWS (TXGUARD_TRAIN_FUNCTION set): TrainFunction, invoked
    asynchronously (a page may take at most 29 s); the candidate appears on the Models page when it is done.

    A bad field or a store training cannot use (no features, no fraud in a window) is a 400 naming it; the
    database failing meanwhile is a 503; nothing is registered then."""
    assert ctx.session is not None
    form = read_train_form(ctx.request.form)
    created_by = f"analyst:{ctx.session.analyst}"
    function = os.environ.get("TXGUARD_TRAIN_FUNCTION")
    if function:
        _invoke_training(function, form, created_by)
        return web.redirect(ctx.request.link("/models/train", started=form.name))
    version = _train_here(form, created_by)
    return web.redirect(ctx.request.link(f"/models/{version}", done="trained"))


def _train_here(form: TrainForm, created_by: str) -> int:
    from importlib.util import find_spec

    from txguard import db
    from txguard.models import training
    from txguard.settings import DatabaseSettings

    if find_spec("lightgbm") is None:  # a training-only dependency: not in the layer the functions run
        raise TrainingNotHere(
            "this deployment cannot train in the console (LightGBM is a training-only dependency and no "
            "TXGUARD_TRAIN_FUNCTION is configured): run `txguard train`"
        )

    until = int(datetime(form.until.year, form.until.month, form.until.day, tzinfo=UTC).timestamp() * 1000)
    options = training.TrainingOptions(
        until=until, name=form.name, seed=form.seed, gap_days=form.gap_days, created_by=created_by
    )
    settings = DatabaseSettings.from_env()
    conn = db.connect(db.dsn_from_settings(settings), settings)
    try:
        result = training.train(conn, options, artifact_store.store())
    except training.TrainingError as exc:
        raise BadInput(f"training {form.name!r} until {form.until}: {exc.message}; nothing was registered") from None
    except psycopg2.Error as exc:
        raise Unavailable(
            f"the database failed while training {form.name!r}: nothing was registered; try again"
        ) from exc
    finally:
        conn.close()
    return result.model.version


def _invoke_training(function: str, form: TrainForm, created_by: str) -> None:
    """Invoke TrainFunction asynchronously (InvocationType Event). Raises Unavailable when Lambda refuses."""
    import json

    import boto3  # in AWS only
    from botocore.exceptions import BotoCoreError, ClientError

    from txguard.observability import logger

    # TrainFunction's event (txguard.models.training_job): it takes no author, so the candidate's created_by is
    # the function's database user; who asked is logged here.
    payload = {"name": form.name, "until": form.until.isoformat(), "seed": form.seed, "gap_days": form.gap_days}
    logger.info(
        "training requested",
        extra={
            "requested_by": created_by,
            "train_function": function,
            "model_name": form.name,
            "until": str(form.until),
        },
    )
    try:
        boto3.client("lambda").invoke(
            FunctionName=function, InvocationType="Event", Payload=json.dumps(payload).encode()
        )
    except (BotoCoreError, ClientError) as exc:
        raise Unavailable(f"TrainFunction could not be invoked ({type(exc).__name__}): nothing was trained") from exc


# ------------------------------------------------------------------------------------------ actions --


def model_action(ctx: Context, cur: psycopg2.extensions.cursor, version: int, action: str) -> web.Response:
    """Shadow, promote or retire a model version: the confirmation page, then (confirm=yes) the change."""
    m = registry.get(cur, version)
    detector = detector_versions.current(cur)
    if ctx.request.form.get("confirm") != "yes":
        return ctx.page(
            "model_confirm.html",
            action=action,
            words=ACTION_WORDS[action],
            m=m,
            s=summary(m.metrics or {}),
            detector=detector,
            target=ctx.request.link(f"/models/{version}/{action}"),
        )
    _check_unchanged(ctx.request.form, detector)
    assert ctx.session is not None
    by = f"analyst:{ctx.session.analyst}"
    if action == "shadow":
        registry.set_shadow(cur, version, artifact_store.store(), created_by=by)
    elif action == "promote":
        registry.promote(cur, version, artifact_store.store(), created_by=by)
    else:
        registry.retire(cur, version, created_by=by)
    return web.redirect(ctx.request.link(f"/models/{version}", done=action))


def rollback_action(ctx: Context, cur: psycopg2.extensions.cursor) -> web.Response:
    """Roll back to the previous detector version: the confirmation page, then (confirm=yes) the change."""
    detector = detector_versions.current(cur)
    if ctx.request.form.get("confirm") != "yes":
        champion = registry.champion(cur)
        if champion is None:
            raise Conflict("there is no champion to roll back: the rules decide alone")
        previous = None if champion.previous_champion is None else registry.get(cur, champion.previous_champion)
        return ctx.page(
            "model_confirm.html",
            action="rollback",
            words=ACTION_WORDS["rollback"],
            m=champion,
            s=summary(champion.metrics or {}),
            detector=detector,
            previous=previous,
            target=ctx.request.link("/models/rollback"),
        )
    _check_unchanged(ctx.request.form, detector)
    assert ctx.session is not None
    by = f"analyst:{ctx.session.analyst}"
    registry.rollback(cur, artifact_store.store(), created_by=by)
    return web.redirect(ctx.request.link("/models", done="rollback"))


def _check_unchanged(form: dict[str, str], detector: detector_versions.DetectorVersion | None) -> None:
    shown = form.get("detector", "")
    now = "" if detector is None else str(detector.version)
    if shown != now:
        raise Conflict(
            f"the detector changed since the confirmation page (detector version {shown or 'none'} then, "
            f"{now or 'none'} now): nothing was changed; look again and confirm again"
        )


# ------------------------------------------------------------------------------------- a decision --


@dataclass(frozen=True)
class Contributions:
    """The champion's contributions to one stored decision, recomputed from its stored features."""

    rows: list[list[str]]  # [feature, value, contribution in log-odds], largest |contribution| first, then bias
    note: str | None  # why there are none, when the decision was scored by a model


def decision_contributions(
    cur: psycopg2.extensions.cursor, decision: Decision, features: dict[str, Any]
) -> Contributions:
    """What each feature added to the log-odds of the champion that scored `decision` (TreeSHAP, as LightGBM's
    pred_contrib), recomputed with that model version from the features stored with the decision; no rows when
    no model scored it, and a note saying why when that model's artifact cannot be read."""
    if decision.model_version is None:
        return Contributions([], None)
    rows, note = _contributions(cur, decision.model_version, features)
    return Contributions(rows, note)


def _contributions(
    cur: psycopg2.extensions.cursor, version: int, features: dict[str, Any]
) -> tuple[list[list[str]], str | None]:
    from txguard.models.artifact import CorruptArtifact

    try:
        m = registry.get(cur, version)
    except registry.ModelNotFound:
        return [], f"model version {version} is not in the registry"
    try:
        model = _tree_model(m.artifact_sha256)
    except (artifact_store.ArtifactUnavailable, CorruptArtifact) as exc:
        return [], f"the artifact of model {version} cannot be read: {exc.message}"
    values = [_number(features.get(name)) for name in model.features]
    try:
        *pairs, bias = model.contributions(values)
    except ValueError as exc:  # a value the scorer refuses (beyond a float's range)
        return [], f"model {version} cannot explain these feature values: {exc}"
    shown = dict(zip(model.features, values, strict=True))
    rows = [
        [name, "missing" if shown[name] is None else f"{shown[name]:g}", f"{c:+.4f}"]
        for name, c in sorted(pairs, key=lambda p: (-abs(p[1]), p[0]))
    ]
    return [*rows, [f"{bias[0]} (the model's average)", "", f"{bias[1]:+.4f}"]], None


_MODELS: dict[str, Any] = {}


def _tree_model(sha256: str) -> Any:
    """The scorer of an artifact, read once per execution environment (artifacts are content-addressed: the
    same hash is the same model forever)."""
    if sha256 not in _MODELS:
        from txguard.models.artifact import decode_artifact
        from txguard.models.scoring import TreeModel

        if len(_MODELS) >= 8:
            _MODELS.clear()
        _MODELS[sha256] = TreeModel.from_artifact(decode_artifact(artifact_store.get(sha256)))
    return _MODELS[sha256]
