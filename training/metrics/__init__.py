"""Evaluation metrics: caption scores (`caption`) and VQA accuracy (`vqa`)."""
