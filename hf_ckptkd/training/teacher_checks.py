"""Whether teachers and student can work together: the same labels, the same kind of input, the
same vocabulary, and finite teacher outputs. Each check names both sides and what would fix it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.build import TimmForImageClassification, is_text_model, label_names_of, num_labels_of, unwrap
from ..tasks import task_of_model


class LabelSpaceError(ValueError):
    """Teachers and student (or two teachers) that do not share one label space or vocabulary."""


class TeacherOutputError(RuntimeError):
    """Teacher logits that contain NaN or inf."""


def describe_module(model: nn.Module) -> str:
    inner = unwrap(model)
    if isinstance(inner, TimmForImageClassification):
        return f"<timm:{inner.model.pretrained_cfg.get('architecture', type(inner.model).__name__)}>"
    config = getattr(inner, "config", None)
    if config is not None and getattr(config, "model_type", None):
        return f"<transformers:{type(inner).__name__}({config.model_type})>"
    return f"<{type(inner).__name__}>"


def vocab_size_of(model: nn.Module) -> int | None:
    """The input vocabulary size of a text model; None for image models."""
    return unwrap(model).config.vocab_size if is_text_model(model) else None


def model_kind(model: nn.Module) -> str:
    """What a model predicts, in words ("a causal LM", "a text classifier", ...): its task's description."""
    return task_of_model(model).model_description


def members_kind(members: Sequence[nn.Module], references: Sequence[str]) -> str:
    """What an ensemble's members predict, in words; they must all predict the same."""
    kinds = [model_kind(m) for m in members]
    for i, kind in enumerate(kinds[1:], 1):
        if kind != kinds[0]:
            raise LabelSpaceError(f"teacher {references[i]!r} is {kind} but teacher {references[0]!r} is "
                                  f"{kinds[0]}; an ensemble's members must predict the same thing")
    return kinds[0]


def members_label_space(members: Sequence[nn.Module], references: Sequence[str]) -> tuple[int, list[str] | None]:
    """(number of labels, label names or None) the members share; they must share one label space."""
    counts = [num_labels_of(m) for m in members]
    for i, n in enumerate(counts[1:], 1):
        if n != counts[0]:
            raise LabelSpaceError(
                f"teacher {references[i]!r} predicts {n} labels but teacher {references[0]!r} predicts "
                f"{counts[0]}; all members of an ensemble must share one label space (use teachers of one run or "
                "dataset)")
    names = [label_names_of(m) for m in members]
    named = [(i, n) for i, n in enumerate(names) if n is not None]
    for i, n in named[1:]:
        j, first = named[0]
        if n != first:
            k = next(p for p, (a, b) in enumerate(zip(first, n)) if a != b)
            raise LabelSpaceError(
                f"teachers {references[j]!r} and {references[i]!r} name their labels differently "
                f"(label {k} is {first[k]!r} for the first and {n[k]!r} for the second; labels "
                f"{first} vs {n}); all members of an ensemble must share one label space in one order")
    return counts[0], (list(named[0][1]) if named else None)


def members_vocab_size(members: Sequence[nn.Module], references: Sequence[str]) -> int | None:
    """The vocabulary the members share (None for image models); they must read the same inputs."""
    sizes = [(r, vocab_size_of(m)) for r, m in zip(references, members)]
    texts = [(r, v) for r, v in sizes if v is not None]
    if texts and len(texts) != len(sizes):
        image = next(r for r, v in sizes if v is None)
        raise LabelSpaceError(f"teacher {texts[0][0]!r} is a text model but teacher {image!r} is not; an "
                              "ensemble's members must read the same inputs")
    for r, v in texts[1:]:
        if v != texts[0][1]:
            raise LabelSpaceError(f"teacher {r!r} has a vocabulary of {v} tokens but teacher {texts[0][0]!r} has "
                                  f"{texts[0][1]}; an ensemble's members must share one tokenizer")
    return texts[0][1] if texts else None


def check_finite(logits: torch.Tensor, batch_index: int, *, references: Sequence[str] | None = None) -> None:
    """Raise `TeacherOutputError` if the teacher logits hold NaN or inf (one device sync per call)."""
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(logits).sum())
    n_inf = int(logits.numel() - finite.sum().item() - n_nan)
    who = f" (teachers: {', '.join(references)})" if references else ""
    raise TeacherOutputError(
        f"teacher logits contain NaN/inf at batch {batch_index}{who}; {n_nan} NaN and {n_inf} inf of {logits.numel()} "
        "values. A teacher snapshot from a diverged run, or a float16 overflow, gives this: check the teachers on a "
        "few examples, drop a bad snapshot from the ensemble, or use teacher_dtype='float32' (or 'bfloat16').")


def _check_tokenizers(teacher_tokenizer, student_tokenizer) -> None:
    t_vocab, s_vocab_map = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab != s_vocab_map:
        differ = sorted(tok for tok in set(t_vocab) | set(s_vocab_map) if t_vocab.get(tok) != s_vocab_map.get(tok))
        examples = ", ".join(f"{tok!r}: {t_vocab.get(tok)} vs {s_vocab_map.get(tok)}" for tok in differ[:3])
        raise LabelSpaceError(
            f"the teachers' tokenizer ({len(t_vocab)} tokens) and the student's ({len(s_vocab_map)} tokens) differ "
            f"in {len(differ)} tokens (e.g. {examples}); the student must use the teachers' tokenizer, since both "
            "read the same input_ids")


def check_label_space(ensemble: nn.Module, student: nn.Module, *,
                      student_label_names: Sequence[str] | None = None, teacher_tokenizer=None,
                      student_tokenizer=None) -> None:
    """Raise `LabelSpaceError` unless teachers and student agree on what they predict and read.

    Checked: the number of labels; the label names in order when both sides carry names
    (`student_label_names` overrides the names the student was built with); for text models the
    tokenizer vocabulary (`get_vocab()` of the two tokenizers when both are given, else the
    models' `config.vocab_size`); and that both read the same kind of input (text or images).
    """
    # An ensemble carries its members' agreed label space (teachers.py builds on this module, so it
    # is recognised by that, not by its class).
    if hasattr(ensemble, "references") and hasattr(ensemble, "label_names"):
        references, n_t, t_names, tvocab_size_of = (ensemble.references, ensemble.num_labels, ensemble.label_names,
                                                  ensemble.vocab_size)
        t_kind = ensemble.kind
    else:  # one bare teacher model: read it without freezing or moving it
        references, n_t = [describe_module(ensemble)], num_labels_of(ensemble)
        t_names, tvocab_size_of = label_names_of(ensemble), vocab_size_of(ensemble)
        t_kind = model_kind(ensemble)
    teachers = f"the teachers ({', '.join(references)})"
    student_desc = f"the student ({describe_module(student)})"
    s_kind = model_kind(student)
    if "causal LM" in (t_kind + s_kind) and t_kind != s_kind:
        raise LabelSpaceError(
            f"{teachers} are {t_kind} but {student_desc} is {s_kind}; a causal LM distils only into a causal LM "
            "(token-level soft labels) and a classifier only into a classifier. Build the student with "
            "transformers:<CausalLM config> for LM teachers (or a classification head for classifier teachers)")
    n_s = num_labels_of(student)
    if s_kind == "a causal LM":
        if teacher_tokenizer is not None and student_tokenizer is not None:
            _check_tokenizers(teacher_tokenizer, student_tokenizer)
        if n_t != n_s:
            raise LabelSpaceError(
                f"{teachers} score {n_t} tokens but {student_desc} scores {n_s}; teachers and student must share the "
                f"tokenizer and its vocabulary: build the student with the teachers' tokenizer (vocab_size={n_t})")
        return
    if n_t != n_s:
        raise LabelSpaceError(
            f"{teachers} predict {n_t} labels but {student_desc} predicts {n_s}; build the student "
            f"with num_labels={n_t} (the teachers' label space) or distil from teachers trained on "
            "the student's dataset")
    s_names = list(student_label_names) if student_label_names is not None else label_names_of(student)
    if s_names is not None and t_names is not None and list(s_names) != list(t_names):
        k = next((i for i, (a, b) in enumerate(zip(t_names, s_names)) if a != b), min(len(t_names), len(s_names)))
        t_k = t_names[k] if k < len(t_names) else None
        s_k = s_names[k] if k < len(s_names) else None
        raise LabelSpaceError(
            f"{teachers} and {student_desc} name their labels differently: label {k} is {t_k!r} for the teachers "
            f"and {s_k!r} for the student (teachers: {list(t_names)}; student: {list(s_names)}). Build the student "
            "with the teachers' label names in the same order (label_names=...), or map the dataset's labels to them")
    s_vocab = vocab_size_of(student)
    if (tvocab_size_of is None) != (s_vocab is None):
        kinds = ("text", "image") if s_vocab is None else ("image", "text")
        raise LabelSpaceError(f"{teachers} are {kinds[0]} models but {student_desc} is a {kinds[1]} model; teachers "
                              "and student must read the same inputs")
    if teacher_tokenizer is not None and student_tokenizer is not None:
        _check_tokenizers(teacher_tokenizer, student_tokenizer)
    elif s_vocab is not None and tvocab_size_of != s_vocab:
        raise LabelSpaceError(
            f"{teachers} have a vocabulary of {tvocab_size_of} tokens but {student_desc} has {s_vocab}; both read "
            f"the same input_ids, so build the student with the teachers' tokenizer (vocab_size={tvocab_size_of})")


__all__ = ["LabelSpaceError", "TeacherOutputError", "check_finite", "check_label_space", "describe_module",
           "members_kind", "members_label_space", "members_vocab_size", "model_kind",
           "vocab_size_of"]
