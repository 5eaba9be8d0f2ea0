"""Environments and promotion: one image digest promoted through a pipeline of targets
(ReleaseTarget.promotes_from), never rebuilt, only when it passed the stage before."""
