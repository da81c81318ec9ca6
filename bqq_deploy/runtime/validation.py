"""Accuracy of a candidate back end (the BQQ model, ONNX or TensorRT) against a reference (the
original model) on the same inputs, checked against user-set tolerances."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError
from .base import Backend


@dataclass(frozen=True)
class Tolerances:
    """Pass criteria; None disables a check.

    min_cosine  cosine similarity of the flattened outputs (all inputs together)
    max_rel     max |candidate - reference| / max |reference| (relative to the largest
                reference magnitude, not element-wise, so near-zero elements do not dominate)
    min_top1    fraction of rows whose arg-max agrees (logit outputs only)
    """

    min_cosine: float | None = 0.99
    max_rel: float | None = None
    min_top1: float | None = 0.95


@dataclass
class OutputMetrics:
    """Metrics of one output over every validation input."""

    name: str
    reference_name: str
    shape: list[int]
    cosine: float
    max_abs: float
    max_rel: float
    top1: float | None = None  # None when the output is not treated as logits


@dataclass
class ValidationResult:
    reference: str
    candidate: str
    samples: int
    tolerances: Tolerances
    outputs: list[OutputMetrics] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reference": self.reference, "candidate": self.candidate,
                "samples": self.samples, "tolerances": asdict(self.tolerances),
                "max_rel_definition": "max|candidate - reference| / max|reference|",
                "outputs": [asdict(o) for o in self.outputs], "failures": list(self.failures)}

    def to_markdown(self) -> str:
        tol = self.tolerances
        lines = [f"**{'PASSED' if self.passed else 'FAILED'}**: candidate `{self.candidate}` vs "
                 f"reference `{self.reference}` on {self.samples} input batch(es).", "",
                 "| output | shape | cosine | max abs err | max rel err | top-1 agreement |",
                 "|---|---|---|---|---|---|"]
        for o in self.outputs:
            top1 = "-" if o.top1 is None else f"{o.top1:.4f}"
            lines.append(f"| {o.name} | {o.shape} | {o.cosine:.6f} | {o.max_abs:.4g} | "
                         f"{o.max_rel:.4g} | {top1} |")
        lines += ["", "max rel err = max|candidate - reference| / max|reference| over the output.",
                  f"Tolerances: min cosine {_fmt(tol.min_cosine)}, max rel {_fmt(tol.max_rel)}, "
                  f"min top-1 {_fmt(tol.min_top1)} (off = not checked)."]
        if self.failures:
            lines += ["", "Failures:", ""] + [f"- {f}" for f in self.failures]
        return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "off" if value is None else f"{value:g}"


@dataclass
class Runs:
    """What one back end produced on a list of input batches: its outputs, batch by batch."""

    name: str
    outputs: list[dict[str, np.ndarray]]


def record(backend: Backend, inputs: list[dict[str, np.ndarray]]) -> Runs:
    """Run backend on every feed dict of inputs (so that it can be released before the
    back end it is compared with is loaded: one large model in memory at a time)."""
    if not inputs:
        raise InputError("validation needs at least one input batch")
    return Runs(backend.name, [backend.run(feeds) for feeds in inputs])


def validate(reference: Backend, candidate: Backend, inputs: list[dict[str, np.ndarray]],
             tolerances: Tolerances | None = None, *, logits: bool | None = None) -> ValidationResult:
    """Run both back ends on every feed dict of inputs and compare the outputs (compare)."""
    return compare(record(reference, inputs), record(candidate, inputs), tolerances, logits=logits)


def compare(reference: Runs, candidate: Runs, tolerances: Tolerances | None = None, *,
            logits: bool | None = None) -> ValidationResult:
    """Compare two back ends' outputs on the same inputs.

    Outputs are paired by name when the names agree, otherwise by position. Top-1 agreement
    (over the last dim) is computed for outputs that look like logits (looks_like_logits:
    2-D [batch, classes] floats, or outputs named *logits*; logits=None), for every output
    (logits=True) or for none (logits=False).
    """
    tolerances = tolerances or Tolerances()
    ref_runs, cand_runs = reference.outputs, candidate.outputs
    result = ValidationResult(reference.name, candidate.name, len(ref_runs), tolerances)
    for cand_name, ref_name in _pair_outputs(list(cand_runs[0]), list(ref_runs[0]), result):
        ref = [np.asarray(run[ref_name]) for run in ref_runs]
        cand = [np.asarray(run[cand_name]) for run in cand_runs]
        mismatched = [(r.shape, c.shape) for r, c in zip(ref, cand) if r.shape != c.shape]
        if mismatched:
            result.failures.append(f"{cand_name}: shape {mismatched[0][1]} differs from the "
                                   f"reference's {mismatched[0][0]}")
            continue
        metrics = compare_arrays(cand_name, ref_name, ref, cand, logits)
        result.outputs.append(metrics)
        result.failures += _check(metrics, tolerances)
    return result


def _pair_outputs(cand: list[str], ref: list[str], result: ValidationResult) -> list[tuple[str, str]]:
    if set(cand) == set(ref):
        return [(name, name) for name in cand]
    if len(cand) != len(ref):
        result.failures.append(f"candidate outputs {cand} and reference outputs {ref} differ in "
                               "number and name: cannot pair them")
        return []
    return list(zip(cand, ref))


def compare_arrays(name: str, reference_name: str, ref: list[np.ndarray], cand: list[np.ndarray],
                   logits: bool | None = None) -> OutputMetrics:
    """Metrics over a list of per-batch arrays (equal shapes pairwise), in float64."""
    r = np.concatenate([a.astype(np.float64).ravel() for a in ref])
    c = np.concatenate([a.astype(np.float64).ravel() for a in cand])
    diff = np.abs(c - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    ref_peak = float(np.abs(r).max()) if r.size else 0.0
    max_rel = max_abs / ref_peak if ref_peak > 0 else (0.0 if max_abs == 0 else float("inf"))
    norms = float(np.linalg.norm(r) * np.linalg.norm(c))
    if norms > 0:
        cosine = float(np.dot(r, c) / norms)
    else:  # both all-zero agree perfectly; one zero and one not do not
        cosine = 1.0 if max_abs == 0 else 0.0
    if not np.isfinite(c).all():
        cosine, max_abs, max_rel = float("nan"), float("inf"), float("inf")
    is_logits = logits if logits is not None else looks_like_logits(name, ref[0])
    top1 = None
    if is_logits:
        ref_top = np.concatenate([a.reshape(-1, a.shape[-1]).argmax(-1) for a in ref])
        cand_top = np.concatenate([a.reshape(-1, a.shape[-1]).argmax(-1) for a in cand])
        top1 = float((ref_top == cand_top).mean())
    return OutputMetrics(name, reference_name, list(ref[0].shape), cosine, max_abs, max_rel, top1)


# Output names that say "a vector, not scores": top-1 agreement means nothing for them.
_NOT_SCORES = re.compile(r"pool|embed|hidden|feature|state|last|token|vector", re.IGNORECASE)


def looks_like_logits(name: str, array: np.ndarray) -> bool:
    """Scores over classes, whose arg-max is the prediction: any float output named *logits*
    ([batch, classes], or [batch, seq, vocab] of a language model: top-1 per token), or a
    float [batch, classes] output whose name does not say it is an embedding or hidden state
    (pooler_output, sentence_embedding, last_hidden_state: their arg-max means nothing)."""
    if not np.issubdtype(array.dtype, np.floating) or array.ndim < 2 or array.shape[-1] < 2:
        return False
    if "logit" in name.lower():
        return True
    return array.ndim == 2 and not _NOT_SCORES.search(name)


def _check(m: OutputMetrics, tol: Tolerances) -> list[str]:
    failures = []
    # "not >=" so that NaN fails too.
    if tol.min_cosine is not None and not m.cosine >= tol.min_cosine:
        failures.append(f"{m.name}: cosine similarity {m.cosine:.6f} < {tol.min_cosine:g}")
    if tol.max_rel is not None and not m.max_rel <= tol.max_rel:
        failures.append(f"{m.name}: max relative error {m.max_rel:.4g} > {tol.max_rel:g} "
                        "(max|diff| / max|reference|)")
    if tol.min_top1 is not None and m.top1 is not None and not m.top1 >= tol.min_top1:
        failures.append(f"{m.name}: top-1 agreement {m.top1:.4f} < {tol.min_top1:g}")
    return failures
