"""Models: building them from a spec (`build`), saving and loading their folders (`folders`), what an
image model records of its inputs (`inputs`), and the CIFAR-style networks registered with timm
(`architectures`). The only package that tells timm from transformers."""

from .build import (ModelSpec, ModelSpecError, TimmForImageClassification, build_causal_lm, build_model,
                    forward_with_features, is_causal_lm, is_text_model, label_names_of, model_family, model_inputs,
                    num_labels_of, penultimate_features, unwrap)
from .folders import folder_holds_causal_lm, has_saved_tokenizer, load_model, save_model
from .inputs import InputMismatchError, InputSpec, recorded_input

__all__ = ["InputMismatchError", "InputSpec", "ModelSpec", "ModelSpecError", "TimmForImageClassification",
           "build_causal_lm", "build_model", "folder_holds_causal_lm", "forward_with_features", "has_saved_tokenizer",
           "is_causal_lm", "is_text_model", "label_names_of", "load_model", "model_family", "model_inputs",
           "num_labels_of", "penultimate_features", "recorded_input", "save_model", "unwrap"]
