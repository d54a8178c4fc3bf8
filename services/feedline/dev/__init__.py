"""`feedline dev`: the local, Kubernetes-free mode (docs/local-mode.md).

Runs the example services and every EventSubscription manifest of a folder on
one machine: SQLite databases, and each subscription's subscriber run from the
pod spec the operator's pure builders render, as a local process.

Modules: ``schema`` (the CRD's rules, checked locally), ``manifests`` (the
folder: subscriptions and Secrets), ``dsns`` (the read models' database URLs,
checked at load), ``plan`` (pure: manifests -> process specs), ``schedule``
(cron), ``supervisor`` (the processes), ``restarts`` (pure: the back-off after
a crash, and its words), ``keeper`` (restarting crashed services), ``feeds``
(a feed no service serves), ``broker`` (the throwaway RabbitMQ node started
when a subscription reads through one; the tests' fixture too), ``control``
(`feedline dev run-now`), ``status`` (what is known of each process),
``table`` (the table, fitted to the terminal), ``main`` (what the CLI calls).
"""
