"""Triton's response cache: which models may carry `response_cache { enable: true }`.

The contract says it: a model's config.pbtxt enables it (text_embed), and serving/encoded.py
enables it on the encoded entry points' inner ensembles (`<model>_encoded_cached`). This
module holds what Triton 2.51 (the tritonserver of the nvidia-pytriton wheel) makes safe,
each checked with the real server (tests/integration/test_response_cache_live.py):

- The cache key is the model name, version and the input tensors' names and bytes
  (Triton core's TritonCache::Hash), NOT the outputs a request names. A miss stores the
  response as produced, i.e. only the outputs that request named; a later hit returns
  that set whatever it asks for (measured: `yolo_encoded` asked for `original_size` first,
  then `boxes,scores` got `original_size` alone). So a cached model must be one every
  caller asks for all of its outputs: a model with ONE output, or a step that only an
  ensemble calls with every output mapped (the entry points' inner ensembles).
- Decoupled models: Triton refuses to load one with the cache enabled ("Response Cache
  does not currently support model ... with 'decoupled' transaction policy").
- Sequence-batched models: not eligible (Triton's docs: only the default and dynamic
  batch schedulers look the cache up).
- Ensembles and python/BLS models are cached (a hit on an ensemble skips every step).

The answer must also be a pure function of the inputs: no model here reads request
parameters, time or randomness (the cache key would not see them).
"""
from __future__ import annotations

from . import ModelContract

# Parameter of a generated model that only an ensemble calls, every output mapped (the
# entry points' inner ensembles): the caller's name. Such a model may have many outputs.
CALLED_BY = "cache_called_by"


class CacheError(ValueError):
    """A config enables the response cache where Triton 2.51 cannot honour it."""


def enabled(c: ModelContract) -> bool:
    return c.config.response_cache.enable


def unsafe_reason(c: ModelContract) -> str | None:
    """Why the response cache must stay off for this model, or None when it may be on."""
    if c.config.model_transaction_policy.decoupled:
        return "decoupled: Triton 2.51 refuses to load a decoupled model with the response cache"
    if c.config.HasField("sequence_batching"):
        return "sequence batching: Triton looks the cache up only in the default and dynamic batchers"
    if len(c.outputs) != 1 and not c.parameter(CALLED_BY, ""):
        return (f"{len(c.outputs)} outputs: Triton's cache key ignores the outputs a request names, so a "
                "request for some of them would leave a partial answer that later requests get; cache "
                "an inner step that is always asked for every output instead (serving/encoded.py)")
    return None


def check(contracts: dict[str, ModelContract]) -> tuple[str, ...]:
    """The committed models that enable the cache (sorted); CacheError naming any that may not."""
    on = sorted(n for n, c in contracts.items() if enabled(c))
    bad = [f"{n}: {why}" for n in on if (why := unsafe_reason(contracts[n]))]
    if bad:
        raise CacheError("response_cache enabled where it is unsafe:\n  " + "\n  ".join(bad))
    return tuple(on)
