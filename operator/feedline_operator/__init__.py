"""The kopf operator that turns EventSubscriptions into CronJobs."""
