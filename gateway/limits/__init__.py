"""Admission: buckets, quotas and concurrency slots a request must pass, in memory or in Redis."""
