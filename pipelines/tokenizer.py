"""Triton python-backend model `clip_tokenizer`: UTF-8 strings -> CLIP BPE ids [77] (int32).

The tokenizer is pipelines/clip_tokenizer.py (open_clip's MobileCLIP2-S2 SimpleTokenizer
re-implemented on numpy, no torch); its vocabulary `bpe_simple_vocab_16e6.txt.gz` lies
in the model's version folder (written by `python -m export --models mobileclip_text`).

The dynamic batcher hands `execute` a list of requests: every string of every request
is tokenised in ONE call, then the rows are split back per request. A request with an
empty, non-UTF-8 or over-long string gets an INVALID_ARG error; the other requests of
the batch are answered normally.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from . import clip_tokenizer as lib


def _invalid_arg(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        context = int(config["output"][0]["dims"][0])
        self.TokenizerError = lib.TokenizerError
        vocab = Path(args["model_repository"]) / args["model_version"] / lib.VOCAB_FILE
        try:
            self.tokenizer = lib.ClipTokenizer(vocab, context_length=context)
        except lib.VocabularyError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, owners = [], []
        for j, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            if tensor is None:
                responses[j] = pb_utils.InferenceResponse(error=_invalid_arg(f"{self.name}: input {self.input_name!r} missing"))
                continue
            items = tensor.as_numpy().reshape(-1)     # [b, 1] object array of bytes
            texts.extend(items.tolist())
            owners.append((j, len(items)))
        tokens, errors = self.tokenizer.tokenize_checked(texts)
        start = 0
        for j, n in owners:
            bad = next((e for e in errors[start:start + n] if e is not None), None)
            if bad is not None:
                # Index within this request, not within the server-side batch.
                where = "" if bad.index is None else f"text[{bad.index - start}]: "
                responses[j] = pb_utils.InferenceResponse(error=_invalid_arg(f"{self.name}: {where}{bad.reason}"))
            else:
                rows = np.ascontiguousarray(tokens[start:start + n])
                responses[j] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)])
            start += n
        return responses

    def finalize(self):
        self.tokenizer = None
