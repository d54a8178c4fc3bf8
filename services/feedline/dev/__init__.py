"""`feedline dev`: the local, Kubernetes-free mode (docs/local-mode.md).

Runs the example services and every EventSubscription manifest of a folder on
one machine: SQLite databases, and each subscription's subscriber run from the
pod spec the operator's pure builders render, as a local process.

Modules: ``schema`` (the CRD's rules, checked locally), ``manifests`` (the
folder: subscriptions and Secrets), ``plan`` (pure: manifests -> process
specs), ``schedule`` (cron), ``supervisor`` (the processes), ``status`` (the
table), ``main`` (what the CLI calls).
"""
