"""One run: its configuration, the trainer (load, attach, loop, save, evaluate), validation and test scoring,
the run directory and its files, tracking and export.
"""
