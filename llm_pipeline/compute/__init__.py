"""Where the curation stages run: the split of a domain into tasks, and the engines that run those tasks.

A domain's work is cut into tasks (compute.plan: a file, or a range of rows of a large file, per task, always the
same cut for the same input); each task runs the stage's own per-batch code over its rows and writes its own shards
(compute.curation); an executor (compute.executor: in this process, or actors on a Ray cluster) runs the tasks and
the stage merges their counts. ``compute.engine: local`` (the default) never comes here: the stages run as one
stream in the calling process, and Ray need not be installed.
"""
