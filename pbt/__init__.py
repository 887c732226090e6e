"""pbt: black-box Population Based Training as a service.

The controller (``pbt.controller``) decides, tasks (``pbt.tasks``) execute the user's
trainer (``pbt.trainers``), storage (``pbt.storage``) remembers.
"""

__version__ = "0.1.0"
