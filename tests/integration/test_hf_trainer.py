"""Hugging Face Trainer: resumed from a mid-run checkpoint in a fresh Trainer, the stream
continues with exactly the batches of the uninterrupted run (nothing lost, nothing repeated)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quadmix_stream import PackedDataset, QuaDMixDataset
from quadmix_stream.stream.pool import pool_texts
from quadmix_stream.training.tokenizer import TextTokenizer, train_tokenizer
from tests.support.streamutil import wide_params

pytest.importorskip("transformers")

STEPS, SAVE_AT = 8, 3  # checkpoints at steps 3 and 6; the resume is from step 3


def _trainer(ds: Path, tok: TextTokenizer, out: Path, workers: int, seen: dict[int, torch.Tensor]):
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from quadmix_stream.loaders.hf import QuaDMixTrainer

    class Recording(QuaDMixTrainer):
        """Records the batch each optimizer step trains on, by step (1-based)."""

        def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001
            seen[self.state.global_step + 1] = inputs["input_ids"].clone()
            return super().training_step(model, inputs, num_items_in_batch)

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    params = wide_params(ds, seed=4)  # documents get 0, 1 and 2+ copies
    data = PackedDataset(QuaDMixDataset(ds, params, seed=3, infinite=True), tok, seq_len=32)
    args = TrainingArguments(
        str(out),
        max_steps=STEPS,
        save_steps=SAVE_AT,
        per_device_train_batch_size=4,
        dataloader_num_workers=workers,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    return Recording(model=model, args=args, train_dataset=data)


@pytest.fixture(scope="module")
def tok(tmp_path_factory, mds_ds) -> TextTokenizer:
    path = tmp_path_factory.mktemp("hf") / "tok.json"
    return TextTokenizer(train_tokenizer(pool_texts(mds_ds, 2000), 512, path))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_checkpoint_continues_with_the_same_batches(mds_ds, tok, tmp_path, workers):
    full: dict[int, torch.Tensor] = {}
    _trainer(mds_ds, tok, tmp_path / "full", workers, full).train()
    assert sorted(full) == list(range(1, STEPS + 1))
    ckpt = tmp_path / "full" / f"checkpoint-{SAVE_AT}"
    assert (ckpt / "quadmix_loader.pt").exists()

    resumed: dict[int, torch.Tensor] = {}  # a fresh Trainer (and loader) in another folder
    _trainer(mds_ds, tok, tmp_path / "resumed", workers, resumed).train(
        resume_from_checkpoint=str(ckpt)
    )
    assert sorted(resumed) == list(range(SAVE_AT + 1, STEPS + 1))  # no step trained twice
    for step in range(SAVE_AT + 1, STEPS + 1):  # the batch the uninterrupted run saw there
        assert torch.equal(resumed[step], full[step]), f"step {step}"
    # a restart would have given the first batches again
    assert not torch.equal(resumed[SAVE_AT + 1], full[1])
