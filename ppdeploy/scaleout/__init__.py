"""Beyond one machine, on Ray (the optional extra ``ppdeploy[ray]``): ``deploy serve/run --engine ray``.

- :mod:`ppdeploy.scaleout.cluster`: checks that Ray is installed, joins or starts a Ray instance, and describes the
  classifier every replica or actor loads (:class:`~ppdeploy.scaleout.cluster.ModelConfig`).
- :mod:`ppdeploy.scaleout.ray_serve`: the ``deploy serve`` application as a Ray Serve deployment.
- :mod:`ppdeploy.scaleout.ray_data`: ``deploy run`` as a Ray Data job over a pool of actors.

Nothing here imports Ray until a function runs: ``import ppdeploy`` and ``deploy --help`` stay light.
"""
