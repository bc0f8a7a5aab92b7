"""The training cache holds the rows of train.splits (the paper: train + val, as the authors)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_stack
from fairdiffusion import latents
from fairdiffusion.data import manifest
from fairdiffusion.errors import FairDiffError


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return tiny_stack(tmp_path_factory.mktemp("latents"), n_train=8, random_flip=False)


def test_train_cache_of_train_and_val_holds_both_splits_encoded_alike(stack, tmp_path):
    both = tmp_path / "both.safetensors"
    latents.cache(stack.base, stack.manifest, "train", stack.ds, False, both,
                  splits=["train", "val"])
    tensors, meta = latents.read(both)
    frame = manifest.read(stack.manifest)
    expected = frame[frame["split"].isin(["train", "val"])]["id"].tolist()
    assert meta["ids"] == expected and meta["split"] == "train"
    assert meta["splits"] == ["train", "val"]
    assert (frame["split"] == "val").sum() > 0 and len(expected) == tensors["latents"].shape[0]

    val = tmp_path / "val.safetensors"
    latents.cache(stack.base, stack.manifest, "val", stack.ds, False, val)
    val_tensors, val_meta = latents.read(val)
    train_tensors, train_meta = latents.read(stack.cache)
    assert train_meta["splits"] == ["train"] and val_meta["splits"] == ["val"]
    # the same rows, encoded the same way as in the one-split caches
    position = {image_id: i for i, image_id in enumerate(meta["ids"])}
    for one, one_meta in ((train_tensors, train_meta), (val_tensors, val_meta)):
        rows = [position[i] for i in one_meta["ids"]]
        assert torch.allclose(tensors["latents"][rows], one["latents"], atol=1e-5)
        assert torch.equal(tensors["groups"][rows], one["groups"])
        prompts = [meta["prompts"][k] for k in tensors["prompt_index"][rows]]
        assert prompts == [one_meta["prompts"][k] for k in one["prompt_index"]]


def test_splits_without_rows_are_refused(stack, tmp_path):
    frame = manifest.read(stack.manifest)
    frame[frame["split"] != "val"].to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "images").symlink_to(stack.manifest.parent / "images")
    with pytest.raises(FairDiffError, match=r"manifest.csv: no rows in split\(s\) \['val'\]"):
        latents.cache(stack.base, tmp_path / "manifest.csv", "val", stack.ds, False,
                      tmp_path / "val.safetensors")
    assert not (tmp_path / "val.safetensors").exists()
