"""Text classification: texts tokenized once with the tokenizer teachers and student share."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import DataCollatorWithPadding

from ..config import ConfigError
from ..data.loading import tokenize_text_dataset
from ..data.config import DataConfig, Splits
from ..models.build import build_model
from .base import RunData, Task, shared_tokenizer

# `tokenize_text_dataset` keeps the labels under the name transformers models take.
TOKENIZED_LABEL_COLUMN = "labels"


class TextClassification(Task):
    name = "text-classification"

    def prepare(self, data: DataConfig, splits: Splits, *, where: str) -> RunData:
        if not data.tokenizer:
            raise ConfigError(f"{where}: --text_column needs --tokenizer (in a recipe: text_column needs "
                              "`tokenizer`): a tokenizer folder, Hub id or 'fortunes' that teachers and student share")
        tokenizer = shared_tokenizer(data, where)
        train, validation, test = (
            tokenize_text_dataset(ds, tokenizer, data.text_column, splits.label_column, data.max_length)
            for ds in (splits.train, splits.validation, splits.test))
        return RunData(self, train, validation, test, splits.label_names, TOKENIZED_LABEL_COLUMN, data,
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
