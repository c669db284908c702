"""Localized LoRA fine-tuning (``textloc finetune``, ``textloc bench finetune``); see ``train.py`` for the design.

One concept per module: ``config`` (settings, result, file names), ``lora`` (targets, adapter, diffusers file),
``data`` (training data), ``objectives`` (losses), ``resume`` (pickle-free checkpoints), ``measure`` (memory),
``train`` (run folder and step loop), ``evaluate`` (held-out scoring), ``bench`` (the benchmark).
"""

from textloc.apps.finetune.bench import bench_finetune, bench_markdown, bench_variants
from textloc.apps.finetune.config import (
    CHECKPOINT_NAME,
    LOG_NAME,
    LORA_WEIGHT_NAME,
    SUMMARY_NAME,
    FinetuneConfig,
    FinetuneResult,
)
from textloc.apps.finetune.data import DataReport, ImageCaptionData, SyntheticData, TrainingData, load_data
from textloc.apps.finetune.evaluate import generate_images, score_signs
from textloc.apps.finetune.lora import (
    add_lora,
    expected_lora_parameters,
    load_lora_pipeline,
    lora_state_dict,
    lora_target_modules,
    parameter_share,
    resolve_layer_spec,
    save_lora,
)
from textloc.apps.finetune.measure import PeakMemory, SavedTensorMeter
from textloc.apps.finetune.objectives import Objective, objective_for
from textloc.apps.finetune.train import finetune

__all__ = [
    "CHECKPOINT_NAME", "LOG_NAME", "LORA_WEIGHT_NAME", "SUMMARY_NAME", "DataReport", "FinetuneConfig",
    "FinetuneResult", "ImageCaptionData", "Objective", "PeakMemory", "SavedTensorMeter", "SyntheticData",
    "TrainingData", "add_lora", "bench_finetune", "bench_markdown", "bench_variants", "expected_lora_parameters",
    "finetune", "generate_images", "load_data", "load_lora_pipeline", "lora_state_dict", "lora_target_modules",
    "objective_for", "parameter_share", "resolve_layer_spec", "save_lora", "score_signs",
]
