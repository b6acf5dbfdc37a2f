"""Text classification: texts tokenized once with the tokenizer teachers and student share."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import DataCollatorWithPadding

from ..config import MODEL_LABEL_COLUMN, ConfigError
from ..data.loading import tokenize_text_dataset
from ..data.config import DataConfig, Splits
from ..models.build import build_model, is_causal_lm, is_text_model
from ..selection.probe import draw_text_probe
from ..selection.probe_sources import ClassifierProbe, DrawnProbe, pad_token_id
from ..selection.settings import SelectionSettings
from .base import RunData, Task, shared_tokenizer, tokenized_probe


class TextProbe(ClassifierProbe):
    """Tokenized texts of a sequence classifier, right-padded per batch; X is each text's bag of tokens."""

    def __init__(self, settings: SelectionSettings, dataset, first_model: nn.Module):
        super().__init__(settings, dataset)
        self.pad_token_id = pad_token_id(first_model)

    def draw(self, dataset) -> DrawnProbe:
        s = self.settings
        return DrawnProbe(*draw_text_probe(dataset, s.max_probe_samples, s.seed, self.label_column_of(dataset),
                                           s.batch_size, self.pad_token_id))

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        return {**super().describe(probe), "transform": "tokenized text (bag of tokens for X)"}


class TextClassification(Task):
    name = "text-classification"
    model_description = "a text classifier"

    def handles(self, model: nn.Module) -> bool:
        return is_text_model(model) and not is_causal_lm(model)

    def inferred_from(self, data: DataConfig) -> bool:
        return bool(data.text_column)  # a text column without a task names text classification

    def probe_source(self, settings: SelectionSettings, dataset, first_model: nn.Module, first_path) -> TextProbe:
        return TextProbe(settings, dataset, first_model)

    def probe_dataset(self, dataset, data: DataConfig, tokenizer):
        return tokenized_probe(dataset, data, lambda ds: tokenize_text_dataset(
            ds, tokenizer, data.text_column, data.label_column, data.max_length))

    def prepare(self, data: DataConfig, splits: Splits, *, where: str) -> RunData:
        if not data.tokenizer:
            raise ConfigError(f"{where}: --text_column needs --tokenizer (in a recipe: text_column needs "
                              "`tokenizer`): a tokenizer folder, Hub id or 'fortunes' that teachers and student share")
        tokenizer = shared_tokenizer(data, where)
        train, validation, test = (
            tokenize_text_dataset(ds, tokenizer, data.text_column, splits.label_column, data.max_length)
            for ds in (splits.train, splits.validation, splits.test))
        # `tokenize_text_dataset` keeps the labels under the name transformers models take.
        return RunData(self, train, validation, test, splits.label_names, MODEL_LABEL_COLUMN, data,
                       tokenizer=tokenizer)

    def model_ready(self, run: RunData) -> tuple[Any, Any, Any]:
        return run.train, run.validation, run.test

    def collator(self, run: RunData):
        return DataCollatorWithPadding(run.tokenizer)

    def build_model(self, spec: str, run: RunData, model_kwargs: dict[str, Any]) -> nn.Module:
        kwargs = {"vocab_size": len(run.tokenizer), "pad_token_id": run.tokenizer.pad_token_id, **model_kwargs}
        return build_model(spec, len(run.label_names), label_names=run.label_names, model_kwargs=kwargs)

    def trainer_kwargs(self, run: RunData, distilling: bool) -> dict[str, Any]:
        # The snapshots carry the tokenizer beside the weights; teachers must share its vocabulary.
        shared = {"teacher_tokenizer": run.tokenizer, "student_tokenizer": run.tokenizer} if distilling else {}
        return {"processing_class": run.tokenizer, **shared}
