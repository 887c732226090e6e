"""The decision side: the loop that drives a study and the policies it asks.

``loop`` is the controller's tick over small collaborators: ``ledger`` (the trial records),
``ordering`` (when results become visible to the policy), ``attempts`` (publishing, retries,
leases), ``control`` (the operator's pause switch), ``gc`` (freeing checkpoints no future trial
can need) and ``lease`` (one controller per study). ``policy`` is the interface a policy
implements, ``view`` the trial list it sees, ``evolution`` PBT's pluggable parts, ``policies``
the built-ins. It reaches workers only through :mod:`pbt.tasks.executor`.
"""
