"""The study: learning-rate tuning, the report on the sweep table, the bench and the GPU check. The sweep grid and
its executors are in training/sweeps/.
"""
