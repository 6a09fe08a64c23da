"""The two towers (generator, discriminator), the MLM baseline, and the masking that feeds them."""
