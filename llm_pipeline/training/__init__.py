"""Library code for the training stages (tokenizer, base_checkpoint, lora_adapter, dpo_model).

The stage modules in ``llm_pipeline.stages`` are thin recipes; what they run lives here: reading the train/eval
split of the deduped shards, packing, the pretraining loop with resumable checkpoints, SFT and preference data,
device/precision defaults and experiment tracking.
"""
