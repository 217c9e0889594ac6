"""Where runs execute: one executor interface for the job queue, sweeps and tuning alike.

Every launcher trains `python -m training train ARGS --out RUN_DIR` (built once, training/run/launch.py) through a
`RunExecutor` (executor.py), the shape they all share:

- `launch(spec) -> handle`: start a run (a `RunSpec`: its name, run directory, train arguments, threads);
- `poll(handle)` / `wait(handles, timeout)`: its exit code once it has ended (the trainer's: 0 finished, 2 user
  error, 3 stopped), None while it runs; `result(handle)` adds its wall time and, for a failure, its log's tail;
- `stop(handle)`: ask the trainer to stop after its current step (it keeps its weights); `kill(handle)`: now;
- `close()`: end what the executor keeps between runs (resident workers, a Ray connection it opened).

`run_all` runs a stream of specs `slots` at a time (a sweep) and `run_one` runs one and waits (tuning, the replay
bench, shipping); both stop what is in flight, gracefully, when they are interrupted. The job queue's worker
(training/jobs/supervisor.py) drives the interface itself, since its stops and time limits come from the store.

The executors and their callers:
- `ResidentExecutor` (resident.py): workers that keep the base model and data loaded between runs
  (training/run/resident.py); sweeps by default, tuning by default, the replay bench's resident side;
- `ForkedExecutor` (forked.py): each run forked from a fork server that has imported torch; `sweep --fresh-process`;
- `ProcessExecutor` (process.py): each run a new interpreter; `tune --fresh-process`, shipping, a Ray task's body;
- `DetachedExecutor` (detached.py): a new interpreter in its own session that outlives its launcher, adopted by
  pid after a restart (pids.py); the job queue;
- `RayExecutor` (ray_tasks.py): each run a Ray task on shared storage; `sweep --executor ray`. The job queue's Ray
  executor (training/jobs/ray_runner.py) has the same interface and ships the run's files back instead.
"""
