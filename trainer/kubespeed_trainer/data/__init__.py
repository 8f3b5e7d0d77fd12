"""Data: sources (files, directories, builtin text), token shards prepared once, packed samples, a resumable sampler."""

from kubespeed_trainer.data import sources
from kubespeed_trainer.data.dataset import TokenDataset
from kubespeed_trainer.data.prepare import prepare_dataset, prepared_tokenizer, read_index
from kubespeed_trainer.data.sampler import ResumableSampler, batches

__all__ = ["ResumableSampler", "TokenDataset", "batches", "prepare_dataset", "prepared_tokenizer", "read_index", "sources"]
