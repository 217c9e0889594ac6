"""Background training jobs: a durable queue (`JobStore`), workers that run each job in its own process
(`Supervisor`), and live status any process can read (`job_status`)."""

from training.jobs.limits import JobLimits
from training.jobs.status import job_status
from training.jobs.store import Job, JobStore
from training.jobs.supervisor import Supervisor

__all__ = ["Job", "JobLimits", "JobStore", "Supervisor", "job_status"]
