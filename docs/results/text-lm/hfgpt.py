"""A Hugging Face GPT-2 built from a config (no download): the model robustweights never saw."""
from transformers import GPT2Config, GPT2LMHeadModel


def build(num_classes=256):
    config = GPT2Config(vocab_size=num_classes, n_positions=128, n_embd=64, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)
