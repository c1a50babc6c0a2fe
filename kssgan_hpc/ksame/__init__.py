"""k-Same: identity clusters of at least k people and their surrogate targets."""

from kssgan_hpc.ksame.clusters import (
    METHODS,
    average_faces,
    check_clusters,
    cluster_identities,
    surrogate_targets,
)

__all__ = ["METHODS", "average_faces", "check_clusters", "cluster_identities", "surrogate_targets"]
