"""The read side: everything that looks at a stored study without driving it.

Opening a stored study, its status overview, the HTML report and training replay. All of it
works from the records alone, from any machine that can read the study's storage, whether or
not a controller is running.
"""
