"""Fine-tuning exported encoders on labeled data (`gpt-ds finetune`): the measure of what pretraining gave."""
