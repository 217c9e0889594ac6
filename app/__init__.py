"""The Gradio dashboard: `python -m app`. UI only; the work is done by `training`."""
