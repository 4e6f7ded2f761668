"""Two tiny randomly initialised sequence classifiers (num_labels 1) with different tokenizers, saved
with safetensors as a user's pretrained reward models would be: a Llama whose BPE tokenizer (the tiny
policy's) carries a chat template, and a BERT with its own WordPiece vocabulary and no template."""

from __future__ import annotations

from pathlib import Path

import torch

# A 2-layer, 32-wide BERT: a different architecture and vocabulary from the tiny Llama policy.
TINY_BERT_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
CHAT_TEMPLATE = "{% for message in messages %}<bos>{{ message['role'] }}: {{ message['content'] }}<eos>{% endfor %}"


def save_tiny_llama_rm(folder: Path, tokenizer, *, seed: int = 1) -> Path:
    """A 2-layer Llama classifier on `tokenizer` (a copy given CHAT_TEMPLATE), in `folder`."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from robust_rlhf.models import TINY_LLAMA_SHAPE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=1, **TINY_LLAMA_SHAPE
    )
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a score head of std 1, so rewards spread well beyond rounding
        model.score.weight.normal_()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # The template goes into the saved tokenizer only: the session's tiny tokenizer stays template-free.
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(folder)
    saved.chat_template = CHAT_TEMPLATE
    saved.save_pretrained(folder)
    return folder


def save_tiny_bert_rm(folder: Path, corpus: list[str], *, seed: int = 2) -> Path:
    """A 2-layer BERT classifier with a WordPiece vocabulary trained on `corpus`, in `folder`."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        corpus, vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    wordpiece.save_model(str(folder))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id, **TINY_BERT_SHAPE)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
