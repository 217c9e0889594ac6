"""The model: the BLIP base (loading, the embedded tiny BLIP, transformers internals named in one place), the
method-aware decoding wrapper and side-by-side comparison. The methods themselves are in training/methods/.
"""
