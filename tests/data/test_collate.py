"""Collation of ranked lists with different numbers of responses."""

import pytest
import torch

from dpokit.data import DataError, collate, tokenize_examples

from .conftest import item


# ---- tokenize and collate -------------------------------------------------------------------------
def test_tokenize_and_collate_lists_of_different_k(tokenizer):
    lists = [item([1.0, 0.0, 0.5], [" the cat", " a dog", " red"], objectives={"safe": [0.0, 1.0, 1.0]}),
             item([2.0, 3.0], [" yes", " no"], objectives={"safe": [1.0, 0.0]})]
    tokenized, _ = tokenize_examples(lists, tokenizer, max_length=32)
    assert [len(t.completions) for t in tokenized] == [3, 2]
    assert tokenized[0].scores == [1.0, 0.0, 0.5]
    batch = collate(tokenized, "lists")
    assert batch.kind == "lists" and len(batch.groups[1][1]) == 2
    torch.testing.assert_close(batch.scores, torch.tensor([[1.0, 0.0, 0.5], [2.0, 3.0, 0.0]]))
    torch.testing.assert_close(batch.extras["scores_safe"], torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(DataError, match="same score columns"):
        collate(tokenize_examples([lists[0], item([1.0, 0.0])], tokenizer, max_length=32)[0], "lists")
