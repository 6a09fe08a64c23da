"""gpt_ds: ELECTRA-style pretraining (generator + discriminator) on DeepSpeed ZeRO-3, exported to Hugging Face."""
__version__ = "0.1.0"
